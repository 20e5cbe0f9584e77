"""The synthetic sample set: determinism, idempotence, subsets and cue-bearing media."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import librosa
import numpy as np
import pytest
import soundfile as sf

from affect_llm.data.synth import generate_synthetic_set, plan_samples
from affect_llm.data.synth.face import render_face_frames, sample_face_style
from affect_llm.data.synth.text import CHANNELS, EMOTIONS, NEUTRAL, labels_for, sentence_pool
from affect_llm.data.synth.voice import render_voice, sample_prosody

SIZES = {"num_train": 8, "num_val": 2, "num_test_per_cue": 2}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_set(out, seed=3, workers=2, **SIZES)
    return out


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_same_seed_gives_identical_files(synth_dir, tmp_path) -> None:
    # One worker against two: the pool must not change a byte.
    generate_synthetic_set(tmp_path, seed=3, workers=1, **SIZES)
    first = sorted(p.relative_to(synth_dir) for p in synth_dir.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (synth_dir / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_existing_set_is_not_regenerated(synth_dir) -> None:
    wav = synth_dir / "media" / "synth-train-0000.wav"
    before = (synth_dir / "manifest.jsonl").stat().st_mtime_ns, wav.stat().st_mtime_ns
    generate_synthetic_set(synth_dir, seed=3, workers=2, **SIZES)
    assert ((synth_dir / "manifest.jsonl").stat().st_mtime_ns, wav.stat().st_mtime_ns) == before


def test_other_parameters_regenerate(tmp_path) -> None:
    small = {"num_train": 1, "num_val": 0, "num_test_per_cue": 0}
    first = _rows(generate_synthetic_set(tmp_path, seed=0, workers=1, **small))
    second = _rows(generate_synthetic_set(tmp_path, seed=1, workers=1, **small))
    assert first[0]["extra"]["prosody"] != second[0]["extra"]["prosody"]
    assert json.loads((tmp_path / "synth_stamp.json").read_text())["seed"] == 1


def test_manifest_subsets_and_consistent_labels(synth_dir) -> None:
    rows = _rows(synth_dir / "manifest.jsonl")
    assert len(rows) == 8 + 2 + 4 * 2
    assert {r["extra"]["cue"] for r in rows if r["split"] == "train"} == {"all", "audio", "face", "text"}
    assert [r["extra"]["cue"] for r in rows if r["split"] == "test"] == ["audio"] * 2 + ["face"] * 2 + [
        "text"
    ] * 2 + ["conflict"] * 2
    for row in rows:
        cue, cues = row["extra"]["cue"], row["extra"]["cues"]
        assert row["labels"] == labels_for(cues)
        assert set(row["extra"]["evidence"]) == {"audio", "video", "text"}
        if cue in CHANNELS:
            assert [c for c in CHANNELS if cues[c] != NEUTRAL] == [cue]
        if cue == "all":
            assert len(set(cues.values())) == 1 and row["labels"][0] in EMOTIONS
        if cue == "conflict":
            assert len(row["labels"]) >= 2 and "disagree" in row["explanation"]
        for key in ("video", "audio", "image"):
            assert (synth_dir / row[key]).is_file()
    difficulty = {r["extra"]["cue"]: r["extra"]["difficulty"] for r in rows}
    assert difficulty["audio"] > difficulty["all"] and difficulty["face"] > difficulty["all"]


def test_test_sentences_are_unseen_in_training() -> None:
    specs = plan_samples(0, num_train=40, num_val=8, num_test_per_cue=8)
    train = {s.transcript for s in specs if s.split != "test"}
    test = {s.transcript for s in specs if s.split == "test"}
    assert test and not train & test
    for level in (*EMOTIONS, NEUTRAL):
        assert len(sentence_pool(level, held_out=False)) >= 16


def test_training_mix_is_forty_twenty_twenty_twenty() -> None:
    specs = plan_samples(0, num_train=20, num_val=0, num_test_per_cue=0)
    counts = {cue: sum(s.cue == cue for s in specs) for cue in ("all", "audio", "face", "text")}
    assert counts == {"all": 8, "audio": 4, "face": 4, "text": 4}


def test_mp4_decodes_with_face_frames(synth_dir) -> None:
    row = _rows(synth_dir / "manifest.jsonl")[0]
    capture = cv2.VideoCapture(str(synth_dir / row["video"]))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    capture.release()
    assert len(frames) >= 4 and frames[0].shape == (128, 128, 3)


def _median_pitch(path: Path) -> float:
    y, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000 and y.ndim == 1
    assert 1.5 <= len(y) / sr <= 3.01
    return float(np.median(librosa.yin(y, fmin=60, fmax=600, sr=sr)))


@pytest.mark.parametrize("variant", ["m3", "f2"])
def test_happy_voice_is_higher_than_sad_on_the_same_voice(tmp_path, variant) -> None:
    sentence = "The box is in the kitchen."
    pitch = {}
    for level in ("happy", "sad"):
        prosody = sample_prosody(level, np.random.default_rng(0), variant=variant)
        render_voice(sentence, prosody, tmp_path / f"{level}.wav")
        pitch[level] = _median_pitch(tmp_path / f"{level}.wav")
    assert pitch["happy"] > pitch["sad"] * 1.2


def test_angry_voice_is_louder_than_sad(tmp_path) -> None:
    rms = {}
    for level in ("angry", "sad"):
        prosody = sample_prosody(level, np.random.default_rng(1), variant="m1")
        render_voice("The box is in the kitchen.", prosody, tmp_path / f"{level}.wav")
        y, _ = sf.read(str(tmp_path / f"{level}.wav"), dtype="float32")
        rms[level] = float(np.sqrt(np.mean(y**2)))
    assert rms["angry"] > 3 * rms["sad"]


def test_face_classes_differ_in_the_mouth_region() -> None:
    style = sample_face_style(np.random.default_rng(0))
    mouths = {
        level: render_face_frames(level, style, 1)[0, 80:120].astype(float) for level in (*EMOTIONS, NEUTRAL)
    }
    levels = list(mouths)
    for i, a in enumerate(levels):
        for b in levels[i + 1 :]:
            assert np.abs(mouths[a] - mouths[b]).mean() > 1.0, (a, b)


def test_face_frames_move_slightly() -> None:
    frames = render_face_frames("happy", sample_face_style(np.random.default_rng(2)), 4)
    assert frames.shape == (4, 128, 128, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])


def test_invalid_sizes_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="num_val"):
        generate_synthetic_set(tmp_path, num_train=1, num_val=-1, num_test_per_cue=0)


def test_manifest_passes_the_schema_check(synth_dir) -> None:
    from affect_llm.data.manifest import load_manifest

    rows = load_manifest(synth_dir / "manifest.jsonl")
    assert len(rows) == 18 and all(row.source == "synth" for row in rows)
