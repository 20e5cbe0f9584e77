"""Checkpoints: exact reload, strict key checks, LoRA merge, trainable groups."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from affect_llm.modeling.checkpoint import CheckpointError, load_checkpoint, merge_checkpoint, save_checkpoint
from affect_llm.modeling.trainable import (
    LoraSettings,
    apply_lora,
    enable_gradient_checkpointing,
    set_trainable,
)


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
    path = tmp_path / "ckpt" / "projectors.safetensors"
    state = load_file(str(path))
    state["audio.extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="unexpected keys.*audio.extra.weight"):
        load_checkpoint(tmp_path / "ckpt")


def test_trainable_groups_are_exclusive(tiny_model):
    model, _ = tiny_model
    apply_lora(model, LoraSettings(r=2))
    counts = set_trainable(model, ["projectors", "lora"])
    assert counts["lora"]["trainable"] and not counts["llm"]["trainable"]
    assert all(not p.requires_grad for p in model.encoders.parameters())
    assert all(p.requires_grad for p in model.projectors.parameters())
    with pytest.raises(ValueError, match="unknown trainable groups"):
        set_trainable(model, ["decoder"])


def test_gradient_checkpointing_trains_with_frozen_encoders(tiny_model, raw_media):
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=2))
    set_trainable(model, ["projectors", "lora"])
    enable_gradient_checkpointing(model)
    model.train()
    batch = processor([processor.build_messages("perceive", ["audio"])], [processor.prepare_media(audio=raw_media["audio"])],
                      answers=['{"labels": ["happy"]}'])
    model(**batch).loss.backward()
    assert model.projectors["audio"].queries.grad is not None
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
