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
    silent = tmp_path / "silent.wav"  # mains hum at -54 dBFS: sound, but no speech
    sf.write(str(silent), 0.002 * np.sin(np.arange(16_000) / 16_000 * 2 * np.pi * 50).astype(np.float32), 16_000)
    sf.write(str(tmp_path / "zeros.wav"), np.zeros(16_000, np.float32), 16_000)
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
        # The row says its sound is no voice (room noise under a video): never recognised.
        {"id": "no voice", "audio": str(espeak_wav), "extra": {"channels": ["video"]}},
        {"id": "blip", "audio": "../blip.wav"},  # 50 ms: too short for every command, refused here too
        {"id": "dialect", "audio": str(espeak_wav), "extra": {"language": "English (US)"}},
        {"id": "zeros", "audio": "../zeros.wav"},  # every sample 0: a silent file, refused as every command does
    ]
    (tmp_path / "zero.wav").write_bytes(b"")
    sf.write(str(tmp_path / "blip.wav"), 0.3 * np.random.default_rng(0).standard_normal(800).astype(np.float32), 16_000)
    base = {"video": None, "audio": None, "image": None, "transcript": None, "labels": [], "explanation": None,
            "valence": None, "arousal": None, "split": "test", "source": "t", "extra": {}}  # fmt: skip
    lines = [json.dumps({**base, **row}) for row in rows]
    lines.insert(3, json.dumps({**base, "id": "bad line", "labels": "angry"}))  # not a row: costs its line only
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "manifest.jsonl"
    summary = fill_manifest_transcripts(manifest, out, recognizer)
    assert (summary.filled, summary.no_speech, summary.no_audio, summary.annotated, summary.no_words) == (1, 1, 2, 3, 1)
    refused = dict(summary.refused)
    assert list(refused) == ["manifest.jsonl:4", "broken", "blip", "dialect", "zeros"]
    assert "zeros.wav" in refused["zeros"] and "silent" in refused["zeros"]
    assert refused["manifest.jsonl:4"].startswith("field 'labels'")
    assert "zero.wav" in refused["broken"] and "'audio'" in refused["broken"] and "empty" in refused["broken"]
    assert "blip.wav" in refused["blip"] and "too short" in refused["blip"]
    assert "field 'extra.language': 'English (US)' is not a language Whisper decodes" in refused["dialect"]
    assert not (out.parent / "manifest.jsonl.partial.jsonl").exists()
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
    assert filled["no voice"].transcript is None and filled["dialect"].transcript is None
    assert "bad line" not in filled


@pytest.mark.embedded
def test_fill_in_memory_rows_uses_the_language_argument(recognizer, espeak_wav) -> None:
    row = ManifestRow(id="x", audio=str(espeak_wav))
    summary = fill_missing_transcripts([row], recognizer, language="en")
    assert summary.filled == 1 and row.extra["transcript_language"] == "en"


@pytest.mark.embedded
def test_a_killed_transcription_goes_on_where_it_stopped(recognizer, espeak_wav, tmp_path: Path) -> None:
    """Through the real command: SIGKILL once the first chunk is on disk; the rerun recognises only
    the clips not yet done and writes the manifest a run never stopped writes."""
    import os
    import signal
    import sys
    import time

    base = {"video": None, "image": None, "transcript": None, "labels": [], "explanation": None, "valence": None,
            "arousal": None, "split": "test", "source": "t", "extra": {"language": "en"}}  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({**base, "id": f"clip{i}", "audio": str(espeak_wav)}) + "\n"
                                for i in range(4)))
    command = [sys.executable, "-m", "affect_llm.cli.main", "data", "transcribe", str(manifest), "--chunk-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out.jsonl"
    progress = tmp_path / "out.jsonl.partial.jsonl"
    proc = subprocess.Popen([*command, "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (progress.is_file() and len(progress.read_text().splitlines()) >= 2):  # the run's line + one clip
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    kept = len(progress.read_text().splitlines()) - 1
    assert 1 <= kept < 4

    resumed = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"4 transcribed, 0 already had words, 0 without speech, 0 without audio; {kept} recognised by the run " \
           "that was stopped" in resumed.stdout
    assert not progress.exists()
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight.jsonl")], env=env, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert out.read_text() == (tmp_path / "straight.jsonl").read_text()
