"""Suite-wide settings (quiet library logs, no hub access) and the tiny composite model fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from affect_llm.loading.build import build_model  # noqa: E402
from affect_llm.loading.spec import ModelSpec  # noqa: E402

TINY_ALL = ModelSpec(
    llm="tiny:llm", audio_encoder="tiny:whisper", video_encoder="tiny:siglip", face_encoder="tiny:fer",
    audio_window_seconds=2.0, num_audio_tokens=3, num_video_tokens=2, num_face_tokens=2,
)


@pytest.fixture
def tiny_model():
    model, processor = build_model(TINY_ALL, seed=0)
    return model, processor


@pytest.fixture
def tiny_lora_model(tiny_model):
    """The tiny model with a LoRA adapter whose output reaches the logits (B not zero), training
    projectors and adapter, in train mode."""
    import torch

    from affect_llm.modeling.trainable import LoraSettings, apply_lora, set_trainable

    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=2, dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    set_trainable(model, ["projectors", "lora"])
    model.train()
    return model, processor


@pytest.fixture
def raw_media():
    rng = np.random.default_rng(0)
    return {
        "audio": rng.standard_normal(12_000).astype(np.float32) * 0.1,
        "video": rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8),
        "face": rng.integers(0, 255, (3, 40, 40, 3), dtype=np.uint8),
    }
