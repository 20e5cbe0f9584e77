"""Tiny random composite models (width 32, 2 layers) for the model tests."""

from __future__ import annotations

import numpy as np
import pytest

from affect_llm.modeling.builder import ModelSpec, build_model

TINY_ALL = ModelSpec(
    llm="tiny:llm", audio_encoder="tiny:whisper", video_encoder="tiny:siglip", face_encoder="tiny:fer",
    audio_window_seconds=2.0, num_audio_tokens=3, num_video_tokens=2, num_face_tokens=2,
)


@pytest.fixture
def tiny_model():
    model, processor = build_model(TINY_ALL, seed=0)
    return model, processor


@pytest.fixture
def raw_media():
    rng = np.random.default_rng(0)
    return {
        "audio": rng.standard_normal(12_000).astype(np.float32) * 0.1,
        "video": rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8),
        "face": rng.integers(0, 255, (3, 40, 40, 3), dtype=np.uint8),
    }
