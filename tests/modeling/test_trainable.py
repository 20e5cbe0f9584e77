"""Trainable groups: chosen once by name, LoRA on the LLM only, checkpointing with frozen encoders."""

from __future__ import annotations

import pytest
import torch

from affect_llm.modeling.trainable import (
    LoraSettings,
    apply_lora,
    checkpointed_layers,
    compile_counts,
    compile_llm_layers,
    enable_gradient_checkpointing,
    set_adapter_dropout,
    set_llm_attention,
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


def _loss_and_gradients(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """One forward and backward from zeroed gradients: the loss and every gradient, copied."""
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointed_layers_are_spread_evenly():
    assert checkpointed_layers(30, 0.5) == set(range(0, 30, 2))
    assert checkpointed_layers(30, 1.0) == set(range(30))
    assert checkpointed_layers(30, 0.0) == set()
    assert checkpointed_layers(4, 0.25) == {0}
    with pytest.raises(ValueError, match="expected 0 to 1"):
        checkpointed_layers(4, 2.0)


def test_a_share_of_checkpointed_layers_keeps_the_loss_and_gradients(tiny_lora_model, raw_media):
    """Recomputing some layers and keeping the others' activations is the same arithmetic."""
    model, processor = tiny_lora_model
    set_trainable(model, ["projectors", "lora"])
    model.train()
    batch = _perceive_batch(processor, raw_media)
    layers = model.language_model.get_decoder().layers

    loss, gradients = _loss_and_gradients(model, batch)
    assert enable_gradient_checkpointing(model, 0.5) == len(layers) // 2
    assert [layer.gradient_checkpointing for layer in layers][:2] == [True, False]
    half_loss, half_gradients = _loss_and_gradients(model, batch)
    assert half_loss == pytest.approx(loss, rel=1e-6)
    assert half_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(half_gradients[name], gradient, rtol=1e-5, atol=1e-7)


def test_attention_switch_keeps_the_loss_and_gradients_and_names_a_bad_value(tiny_lora_model, raw_media):
    """Matmul attention in place of sdpa, on a LoRA-wrapped LLM: the same loss and gradients."""
    model, processor = tiny_lora_model
    batch = _perceive_batch(processor, raw_media)

    assert set_llm_attention(model, None) == "sdpa"  # None keeps what the model loaded with
    loss, gradients = _loss_and_gradients(model, batch)
    assert set_llm_attention(model, "eager") == "eager"
    assert model.language_model.get_base_model().config._attn_implementation == "eager"
    eager_loss, eager_gradients = _loss_and_gradients(model, batch)
    assert eager_loss == pytest.approx(loss, rel=1e-5)
    assert eager_gradients.keys() == gradients.keys()
    for name, grad in gradients.items():
        torch.testing.assert_close(eager_gradients[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="train.attention='no_such_kernel'"):
        set_llm_attention(model, "no_such_kernel")


def _perceive_batch(processor, raw_media):
    return processor([processor.build_messages("perceive", ["audio"])], [processor.prepare_media(audio=raw_media["audio"])],
                     answers=['{"labels": ["happy"]}'])


def test_adapter_dropout_off_leaves_a_frozen_adapter_deterministic(tiny_model, raw_media):
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=2, dropout=0.5))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained adapter: its output, and so its dropout, reaches the logits
            torch.nn.init.normal_(param, std=1.0)
    model.train()
    batch = _perceive_batch(processor, raw_media)
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, model(**batch).logits)
        set_adapter_dropout(model, False)
        assert torch.equal(model(**batch).logits, model(**batch).logits)
    assert model.projectors.training  # only the adapter's dropout left train mode
    set_adapter_dropout(model, True)
    assert all(m.training for n, m in model.named_modules() if n.endswith("lora_dropout"))


@pytest.mark.slow
def test_compiled_layers_under_checkpointing_give_the_eager_gradients(tiny_model, raw_media):
    """The compiled layer runs inside the checkpoint: no graph break, the same gradients."""
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=2, dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # gradients reach lora_A too
            torch.nn.init.normal_(param, std=0.1)
    set_trainable(model, ["projectors", "lora"])
    enable_gradient_checkpointing(model)
    model.train()
    batch = _perceive_batch(processor, raw_media)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = gradients()
    before = compile_counts()
    assert compile_llm_layers(model) == len(model.language_model.get_decoder().layers)
    compiled = gradients()
    after = compile_counts()
    assert after["graph_breaks"] == before["graph_breaks"] and after["graphs"] > before["graphs"]
    assert compiled.keys() == eager.keys() and any("lora_A" in n for n in compiled)
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-4, atol=1e-6, msg=name)
