"""Speech recognition fills missing transcripts and marks them as recognised."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from affect_llm.data.manifest import ManifestRow, load_manifest
from affect_llm.features.asr import (
    TRANSCRIPT_SOURCE,
    SpeechRecognizer,
    fill_manifest_transcripts,
    fill_missing_transcripts,
)

SENTENCE = "Hello, my name is John. I live in London and I work as a teacher."


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def test_bad_waveform_is_named_by_index() -> None:
    with pytest.raises(ValueError, match=r"audio 1: expected a non-empty 1-D waveform, got shape \(2, 5\)"):
        SpeechRecognizer().transcribe([np.ones(5, np.float32), np.ones((2, 5), np.float32)])


def test_language_list_must_match_the_clips() -> None:
    with pytest.raises(ValueError, match="got 1 languages for 2 clips"):
        SpeechRecognizer().transcribe([np.zeros(5, np.float32)] * 2, ["en"])


def test_silence_gives_no_words_without_loading_the_model() -> None:
    # Whisper invents words for silence; a silent clip must never reach it.
    recognizer = SpeechRecognizer(model="/nonexistent/whisper")
    hum = 0.002 * np.sin(np.arange(16_000) / 16_000 * 2 * np.pi * 50).astype(np.float32)  # mains hum, -54 dBFS
    result = recognizer.transcribe([np.zeros(16_000, np.float32), hum])
    assert [(r.text, r.language, r.dropped) for r in result] == [("", None, "no speech energy")] * 2


def test_repetition_loops_are_detected() -> None:
    from affect_llm.features.asr import compression_ratio

    assert compression_ratio(" ".join(["la"] * 60)) > 2.4 > compression_ratio(SENTENCE)


@pytest.fixture(scope="module")
def espeak_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("asr")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-s", "120", "-w", str(raw), SENTENCE], check=True)
    # espeak writes 22.05 kHz; the recogniser takes 16 kHz mono.
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(folder / "speech.wav")], check=True)
    return folder / "speech.wav"


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    from affect_llm.references import ModelNotPreparedError, resolve_model_path

    try:
        resolve_model_path("whisper-base")
    except ModelNotPreparedError as exc:
        pytest.skip(str(exc))
    return SpeechRecognizer(batch_size=4)


@pytest.mark.embedded
def test_transcribes_an_espeak_sentence_and_detects_english(recognizer, espeak_wav) -> None:
    import jiwer

    audio, rate = sf.read(str(espeak_wav), dtype="float32")
    assert rate == 16_000
    (result,) = recognizer.transcribe([audio])
    assert jiwer.wer(_words(SENTENCE), _words(result.text)) < 0.2, result.text
    assert result.language == "en" and result.recognised and result.source == TRANSCRIPT_SOURCE


@pytest.mark.embedded
def test_fill_marks_recognised_words_and_leaves_the_rest(recognizer, espeak_wav, tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(16_000, np.float32), 16_000)
    manifest = tmp_path / "in" / "manifest.jsonl"
    manifest.parent.mkdir()
    rows = [
        {"id": "speech", "audio": str(espeak_wav), "explanation": "The voice sounds neutral. There is no transcript.",
         "extra": {"channels": ["audio"], "language": "en", "explanation_source": "acted emotion of the recording",
                   "evidence": {"audio": "The voice sounds neutral.", "video": None, "text": None}}},
        {"id": "annotated", "audio": str(espeak_wav), "transcript": "Given words."},
        {"id": "silent", "audio": "../silent.wav"},
        {"id": "words", "transcript": "Only text."},
        {"id": "photo", "image": "p.jpg"},
        {"id": "syllables", "audio": str(espeak_wav), "extra": {"transcript_source": "none"}},
        {"id": "broken", "audio": "../zero.wav"},  # 0 bytes: refused, and the rows after it go on
        {"id": "after", "audio": str(espeak_wav), "transcript": "Still read."},
    ]
    (tmp_path / "zero.wav").write_bytes(b"")
    base = {"video": None, "audio": None, "image": None, "transcript": None, "labels": [], "explanation": None,
            "valence": None, "arousal": None, "split": "test", "source": "t", "extra": {}}  # fmt: skip
    manifest.write_text("".join(json.dumps({**base, **row}) + "\n" for row in rows))
    out = tmp_path / "out" / "manifest.jsonl"
    summary = fill_manifest_transcripts(manifest, out, recognizer)
    assert (summary.filled, summary.no_speech, summary.no_audio, summary.annotated, summary.no_words) == (1, 1, 1, 3, 1)
    ((refused_id, reason),) = summary.refused
    assert refused_id == "broken" and "zero.wav" in reason and "'audio'" in reason and "empty" in reason
    filled = {row.id: row for row in load_manifest(out)}
    speech = filled["speech"]
    assert _words(speech.transcript).startswith("hello my name is john")
    assert speech.extra["transcript_source"] == "asr:whisper-base"
    assert speech.extra["transcript_language"] == "en" and speech.extra["channels"] == ["audio", "text"]
    # The derived explanation said there were no words: it goes, and the row says why.
    assert speech.explanation is None and "evidence" not in speech.extra and speech.extra["explanation_dropped"]
    assert filled["annotated"].transcript == "Given words." and "transcript_source" not in filled["annotated"].extra
    assert filled["silent"].transcript is None and filled["silent"].media_path("audio").resolve() == silent.resolve()
    assert filled["syllables"].transcript is None
    assert filled["broken"].transcript is None and filled["after"].transcript == "Still read."


@pytest.mark.embedded
def test_fill_in_memory_rows_uses_the_language_argument(recognizer, espeak_wav) -> None:
    row = ManifestRow(id="x", audio=str(espeak_wav))
    summary = fill_missing_transcripts([row], recognizer, language="en")
    assert summary.filled == 1 and row.extra["transcript_language"] == "en"
