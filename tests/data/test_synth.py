"""The synthetic sample set: determinism, idempotence, subsets, missing channels and cue-bearing media."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import librosa
import numpy as np
import pytest
import soundfile as sf

from affect_llm.data.synth import MISSING_LAYOUTS, generate_synthetic_set, plan_samples
from affect_llm.data.synth.face import (
    GEOMETRY_RANGES,
    render_background_frames,
    render_face_frames,
    sample_face_geometry,
    sample_face_style,
)
from affect_llm.data.synth.text import (
    CHANNELS,
    EMOTIONS,
    NEUTRAL,
    VOCALISATIONS,
    evidence_for,
    explanation_for,
    labels_for,
    sentence_pool,
)
from affect_llm.data.synth.voice import render_voice, sample_prosody

SIZES = {"num_train": 8, "num_val": 2, "num_test_per_cue": 2, "num_test_per_missing": 1}
CUE_SUBSETS = ["audio", "face", "text", "conflict"]


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
    assert len(rows) == 8 + 2 + 4 * 2 + 6
    test_cues = [r["extra"]["cue"] for r in rows if r["split"] == "test"]
    assert test_cues == [c for c in CUE_SUBSETS for _ in range(2)] + list(MISSING_LAYOUTS)
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
            assert row[key] is None or (synth_dir / row[key]).is_file()
    difficulty = {r["extra"]["cue"]: r["extra"]["difficulty"] for r in rows}
    assert difficulty["audio"] > difficulty["all"] and difficulty["face"] > difficulty["all"]


def test_test_sentences_are_unseen_in_training() -> None:
    specs = plan_samples(0, num_train=40, num_val=8, num_test_per_cue=8)
    train = {s.transcript for s in specs if s.split != "test"} - {None}
    test = {s.transcript for s in specs if s.split == "test"} - {None}
    assert test and not train & test
    for level in (*EMOTIONS, NEUTRAL):
        assert len(sentence_pool(level, held_out=False)) >= 16


def test_training_mix_gives_a_quarter_to_missing_channels() -> None:
    specs = plan_samples(0, num_train=100, num_val=0, num_test_per_cue=0)
    counts = {cue: sum(s.cue == cue for s in specs) for cue in ("all", "audio", "face", "text", *MISSING_LAYOUTS)}
    assert counts == {"all": 22, "audio": 18, "face": 18, "text": 18, **dict.fromkeys(MISSING_LAYOUTS, 4)}


def test_version_one_subsets_keep_their_ids_and_content() -> None:
    # Adding the missing-channel subsets must not move a sample of the cue subsets.
    specs = {s.id: s for s in plan_samples(0, num_train=40, num_val=8, num_test_per_cue=6)}
    without = {s.id: s for s in plan_samples(0, num_train=40, num_val=8, num_test_per_cue=6, num_test_per_missing=0)}
    assert len(specs) == len(without) + 6 * len(MISSING_LAYOUTS)
    for sample_id, spec in without.items():
        if spec.split == "test":
            assert specs[sample_id] == spec


def test_training_conflicts_take_their_share_and_leave_the_test_set_alone() -> None:
    plain = plan_samples(0, num_train=100, num_val=20, num_test_per_cue=6, num_test_per_missing=3)
    mixed = plan_samples(0, num_train=100, num_val=20, num_test_per_cue=6, num_test_per_missing=3,
                         train_conflict_share=0.1)
    assert [s for s in mixed if s.split == "test"] == [s for s in plain if s.split == "test"]
    train = [s for s in mixed if s.split == "train"]
    conflicts = [s for s in train if s.cue == "conflict"]
    assert len(train) == 100 and len(conflicts) == 10
    assert sum(s.cue == "conflict" for s in mixed if s.split == "val") == 2
    for spec in conflicts:
        # Disagreeing channels: every emotion shown is a label, and the reference says they disagree.
        assert len(labels_for(spec.cues)) >= 2 and "disagree" in explanation_for(spec.cues)
    # The other subsets shrink in proportion (a 0.9 share of the plain mix, rounded).
    assert sum(s.cue == "audio" for s in train) == 16 and sum(s.cue == "all" for s in train) == 20


def test_a_conflict_share_outside_its_range_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="train_conflict_share"):
        generate_synthetic_set(tmp_path, num_train=4, num_val=0, num_test_per_cue=0, train_conflict_share=1.0)


def test_a_bad_seed_leaves_an_existing_set_whole(synth_dir, tmp_path) -> None:
    """Parameters are checked before anything on disk is cleared: a typo cannot delete a set."""
    copy = tmp_path / "set"
    shutil.copytree(synth_dir, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        generate_synthetic_set(copy, seed=-1, num_train=4, num_val=0, num_test_per_cue=0)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_a_manifest_it_did_not_write_is_never_replaced(tmp_path) -> None:
    theirs = tmp_path / "manifest.jsonl"
    theirs.write_text('{"id": "mine"}\n')
    with pytest.raises(FileExistsError, match="a manifest that data synth did not write"):
        generate_synthetic_set(tmp_path, num_train=4, num_val=0, num_test_per_cue=0)
    assert theirs.read_text() == '{"id": "mine"}\n' and not (tmp_path / "media").exists()


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
    assert len(rows) == 24 and all(row.source == "synth" for row in rows)


def _by_cue(synth_dir: Path) -> dict[str, dict]:
    return {r["extra"]["cue"]: r for r in _rows(synth_dir / "manifest.jsonl") if r["split"] == "test"}


@pytest.mark.parametrize(
    ("cue", "media", "channels"),
    [
        ("no_audio", ("video", "image"), ["video", "text"]),
        ("no_face", ("video", "audio", "image"), ["audio", "text"]),
        ("no_text", ("video", "audio", "image"), ["audio", "video"]),
        ("audio_only", ("audio",), ["audio"]),
        ("image_only", ("image",), ["video"]),
        ("text_only", (), ["text"]),
    ],
)
def test_missing_channel_rows_have_only_their_media(synth_dir, cue, media, channels) -> None:
    row = _by_cue(synth_dir)[cue]
    assert [k for k in ("video", "audio", "image") if row[k] is not None] == list(media)
    assert row["extra"]["channels"] == channels
    assert (row["transcript"] is not None) == ("text" in channels)
    # Without words by design: speech recognition must leave the transcript empty.
    assert (row["extra"].get("transcript_source") == "none") == ("text" not in channels)
    evidence = row["extra"]["evidence"]
    assert [k for k, v in evidence.items() if v is not None] == channels
    assert row["labels"] and row["labels"][0] in EMOTIONS


def test_explanations_never_describe_an_absent_channel(synth_dir) -> None:
    words = {"audio": ("voice",), "video": ("face smiles", "brows", "mouth"), "text": ("words",)}
    for row in _rows(synth_dir / "manifest.jsonl"):
        absent = {"audio", "video", "text"} - set(row["extra"]["channels"])
        text = row["explanation"].lower()
        for channel in absent:
            assert not any(w in text for w in words[channel]), (row["id"], channel, text)
        # ... and says which channels are missing.
        assert ("there is no audio" in text) == ("audio" in absent)
        assert ("no face is visible" in text) == ("video" in absent)


def test_video_without_audio_has_no_sound_track_and_no_face_clip_has_no_face(synth_dir) -> None:
    import subprocess

    by_cue = _by_cue(synth_dir)
    streams = {}
    for cue in ("no_audio", "no_face"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0",
             str(synth_dir / by_cue[cue]["video"])],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        streams[cue] = probe.stdout.split()
    assert streams == {"no_audio": ["video"], "no_face": ["video", "audio"]}
    assert by_cue["no_face"]["extra"]["cues"]["face"] is None


def test_clips_without_words_say_syllables() -> None:
    specs = plan_samples(0, num_train=0, num_val=0, num_test_per_cue=0, num_test_per_missing=4)
    for spec in specs:
        if spec.transcript is None:
            assert spec.spoken in VOCALISATIONS
        else:
            assert spec.spoken == spec.transcript


def test_background_frames_hold_no_face() -> None:
    from affect_llm.data.faces import FaceCropper

    frames = render_background_frames(sample_face_style(np.random.default_rng(4)), 3)
    assert frames.shape == (3, 128, 128, 3) and frames.dtype == np.uint8
    _, found = FaceCropper().crop_frames(frames)
    assert found == [False, False, False]


def test_reference_text_for_absent_channels() -> None:
    cues = {"audio": None, "face": "happy", "text": None}
    assert evidence_for(cues, None) == {
        "audio": None, "video": "The face smiles with upturned mouth corners.", "text": None,
    }  # fmt: skip
    assert explanation_for(cues) == (
        "The face smiles with upturned mouth corners, which suggests happiness. "
        "There is no audio and there is no transcript."
    )
    full = {"audio": "sad", "face": "neutral", "text": "neutral"}
    assert explanation_for(full) == (
        "The voice is low, slow and quiet, which suggests sadness; the face is neutral and the words are neutral."
    )


def test_face_geometry_keeps_each_levels_description() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        sad, angry = sample_face_geometry("sad", rng), sample_face_geometry("angry", rng)
        happy, neutral = sample_face_geometry("happy", rng), sample_face_geometry("neutral", rng)
        surprised = sample_face_geometry("surprised", rng)
        # "down-turned mouth and raised inner brows"; "lowered, inward-slanted brows and a tight mouth"
        assert sad["brow_inner"] > sad["brow_outer"] and sad["mouth_curve"] < 0
        assert angry["brow_inner"] < angry["brow_outer"] and angry["mouth_w"] < happy["mouth_w"]
        assert happy["mouth_curve"] > 0 and abs(neutral["mouth_curve"]) <= 1
        assert surprised["eye_h"] > neutral["eye_h"] and surprised["brow_inner"] > neutral["brow_inner"]
    with pytest.raises(ValueError, match="unknown face level 'bored'"):
        sample_face_geometry("bored", rng)


def test_without_a_geometry_a_face_is_drawn_as_before() -> None:
    from affect_llm.data.synth import face

    style = sample_face_style(np.random.default_rng(5))
    for level in GEOMETRY_RANGES:
        fixed = face._FEATURES[level]
        assert all(low <= fixed[name] <= high for name, (low, high) in GEOMETRY_RANGES[level].items()), level
        assert np.array_equal(render_face_frames(level, style, 2), render_face_frames(level, style, 2, fixed))
    other = sample_face_geometry("sad", np.random.default_rng(1))
    assert not np.array_equal(render_face_frames("sad", style, 1), render_face_frames("sad", style, 1, other))


class _ReadsEveryFaceHappy:
    """A face reader (test double: the real one needs the embedded FER weights) that reads every
    frame as happy."""

    identity = "reads-happy#1"

    def __call__(self, frames: np.ndarray) -> list[str]:
        assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8
        return ["happy"] * len(frames)


def test_a_face_reader_redraws_faces_until_read_and_changes_nothing_else(tmp_path) -> None:
    from affect_llm.data.synth.generate import FACE_CANDIDATES, MAX_FACE_BATCHES

    reader = _ReadsEveryFaceHappy()
    manifest = generate_synthetic_set(tmp_path / "read", seed=3, workers=2, face_reader=reader, **SIZES)
    read, plain = _rows(manifest), _rows(generate_synthetic_set(tmp_path / "plain", seed=3, workers=1, **SIZES))
    assert json.loads((tmp_path / "read" / "synth_stamp.json").read_text())["faces_read_by"] == "reads-happy#1"
    faces = 0
    for row, before in zip(read, plain, strict=True):
        extra, old = row["extra"], before["extra"]
        # Words, voice, labels and explanations are the same draws; only a drawn face changes.
        for key in ("labels", "transcript", "explanation", "split", "id"):
            assert row[key] == before[key], (row["id"], key)
        assert extra["cues"] == old["cues"] and extra.get("prosody") == old.get("prosody")
        if extra["cues"]["face"] is None or row["image"] is None:
            assert "face_geometry" not in extra and extra.get("face_style") == old.get("face_style")
            continue
        faces += 1
        level = extra["cues"]["face"]
        # Read as drawn at the first candidate, or every candidate tried and the last one kept.
        expected = 1 if level == "happy" else FACE_CANDIDATES * MAX_FACE_BATCHES
        assert extra["face_draws"] == expected, row["id"]
        assert set(extra["face_geometry"]) == set(GEOMETRY_RANGES[level])
        # The still image is the frame the reader judged, drawn from the recorded style and geometry.
        style = face_style_from(extra["face_style"])
        drawn = render_face_frames(level, style, 1, extra["face_geometry"])[0]
        png = cv2.cvtColor(cv2.imread(str(tmp_path / "read" / row["image"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(png, drawn), row["id"]
        assert extra["face_still"] is True
    assert faces > 0


def test_a_still_face_repeats_its_first_frame() -> None:
    style = sample_face_style(np.random.default_rng(4))
    geometry = sample_face_geometry("angry", np.random.default_rng(5))
    moving = render_face_frames("angry", style, 6, geometry)
    still = render_face_frames("angry", style, 6, geometry, still=True)
    assert still.shape == moving.shape
    assert all(np.array_equal(frame, moving[0]) for frame in still)
    assert not all(np.array_equal(frame, moving[0]) for frame in moving)


def face_style_from(recorded: dict):
    from affect_llm.data.synth.face import FaceStyle

    return FaceStyle(**{key: tuple(value) if isinstance(value, list) else value for key, value in recorded.items()})


def test_an_id_prefix_renames_every_row_and_changes_nothing_else(tmp_path: Path) -> None:
    plain = plan_samples(0, num_train=12, num_val=4, num_test_per_cue=2)
    named = plan_samples(0, num_train=12, num_val=4, num_test_per_cue=2, id_prefix="synth_rl")
    assert [s.id.replace("synth_rl-", "synth-", 1) for s in named] == [s.id for s in plain]
    assert all(s.id.startswith("synth_rl-") for s in named)
    assert [replace(s, id="") for s in named] == [replace(s, id="") for s in plain]
    with pytest.raises(ValueError, match="id_prefix"):
        generate_synthetic_set(tmp_path / "never", id_prefix="../escape")
    assert not (tmp_path / "never").exists()


def test_the_cli_writes_a_second_set_under_its_own_ids(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "affect_llm.cli.main", "data", "synth", "--out", str(tmp_path / "more"),
               "--seed", "1", "--num-train", "3", "--num-val", "0", "--num-test-per-cue", "0"]
    bad = subprocess.run([*command, "--id-prefix", "a b"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--id-prefix: id_prefix must be a letter" in bad.stderr
    assert not (tmp_path / "more").exists()
    done = subprocess.run([*command, "--id-prefix", "more"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "more" / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["more-train-0000", "more-train-0001", "more-train-0002"]
    assert all((tmp_path / "more" / r["audio"]).is_file() for r in rows if r["audio"])
    assert json.loads((tmp_path / "more" / "synth_stamp.json").read_text())["id_prefix"] == "more"
