"""Checkpoints: exact reload, strict key checks, LoRA merge, trainable groups."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from affect_llm.loading.checkpoint import CheckpointError, load_checkpoint, merge_checkpoint, save_checkpoint
from affect_llm.modeling.trainable import LoraSettings, apply_lora


def _perturb_lora(model):
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.1)  # large enough to change outputs, small enough for fp32 merge error


def _logits(model, processor):
    batch = processor([processor.build_messages("perceive", [], "hello")])
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_lora_checkpoint_reloads_exactly(tiny_model, tmp_path):
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    _perturb_lora(model)
    save_checkpoint(model, processor, tmp_path / "ckpt", metadata={"step": 3})
    again, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(_logits(model, processor), _logits(again, processor))


def test_merge_matches_adapter_outputs(tiny_model, tmp_path):
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    _perturb_lora(model)
    save_checkpoint(model, processor, tmp_path / "ckpt")
    merge_checkpoint(tmp_path / "ckpt", tmp_path / "merged")
    merged, _ = load_checkpoint(tmp_path / "merged")
    assert not hasattr(merged.language_model, "peft_config")
    assert torch.allclose(_logits(model, processor), _logits(merged, processor), atol=1e-4)


def test_unexpected_projector_key_fails_loudly(tiny_model, tmp_path):
    model, processor = tiny_model
    save_checkpoint(model, processor, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(path))
    state["projectors.audio.extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="unexpected keys.*audio.extra.weight"):
        load_checkpoint(tmp_path / "ckpt")
