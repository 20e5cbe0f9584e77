"""Trainable groups: chosen once by name, LoRA on the LLM only, checkpointing with frozen encoders."""

from __future__ import annotations

import pytest

from affect_llm.modeling.trainable import (
    LoraSettings,
    apply_lora,
    enable_gradient_checkpointing,
    set_trainable,
)


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
