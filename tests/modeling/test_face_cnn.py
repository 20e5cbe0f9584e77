"""FerMiniXception: shapes, Keras "same" pooling, auto-class registration and save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from affect_llm.configuration import FER_LABELS, FerMiniXceptionConfig
from affect_llm.modeling import face_cnn
from affect_llm.modeling.face_cnn import (
    FerMiniXceptionModel,
    keras_same_max_pool,
)


def tiny_config() -> FerMiniXceptionConfig:
    return FerMiniXceptionConfig(stem_filters=4, block_filters=(4, 8))


def test_forward_shapes_tiny() -> None:
    torch.manual_seed(0)
    model = FerMiniXceptionModel(tiny_config()).eval()
    out = model(torch.rand(3, 1, 64, 64) * 2 - 1)
    assert out.last_hidden_state.shape == (3, 1, 8 + 7)
    assert out.pooler_output.shape == (3, 15)
    assert out.logits.shape == (3, 7)
    # The pooled feature ends with the class logits.
    torch.testing.assert_close(out.pooler_output[:, -7:], out.logits)
    torch.testing.assert_close(
        model.logits(torch.zeros(1, 1, 64, 64)), model(torch.zeros(1, 1, 64, 64)).logits
    )


def test_default_config_matches_keras_model() -> None:
    config = FerMiniXceptionConfig()
    model = FerMiniXceptionModel(config)
    assert config.hidden_size == 128 + 7
    assert [config.id2label[i] for i in range(7)] == list(FER_LABELS)
    # The Keras mini-Xception has 56,951 trainable parameters.
    assert sum(p.numel() for p in model.parameters()) == 56_951
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_forward_rejects_wrong_channels() -> None:
    model = FerMiniXceptionModel(tiny_config())
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.zeros(1, 3, 64, 64))


def test_keras_same_max_pool_pads_at_the_end() -> None:
    # 4x4 input, 3x3 window, stride 2: TensorFlow pads one row/column at the bottom/right only.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = keras_same_max_pool(x)
    assert out.shape == (1, 1, 2, 2)
    assert out.flatten().tolist() == [10.0, 11.0, 14.0, 15.0]
    # Odd size 15 -> 8, as in the 4th module of the 64x64 model.
    assert keras_same_max_pool(torch.zeros(1, 1, 15, 15)).shape == (1, 1, 8, 8)


def test_auto_classes_and_save_load_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config()).eval()
    assert isinstance(model, FerMiniXceptionModel)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).block_filters == [4, 8]
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    torch.testing.assert_close(loaded(x).pooler_output, model(x).pooler_output)


def test_registration_is_idempotent() -> None:
    # Importing registered once already; registering again must neither raise nor rebind.
    face_cnn.register_auto_classes()
    face_cnn.register_auto_classes()
    assert type(AutoConfig.for_model("fer_mini_xception")) is FerMiniXceptionConfig
    assert isinstance(AutoModel.from_config(tiny_config()), FerMiniXceptionModel)
