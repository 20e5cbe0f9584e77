"""The chunked answer-token loss equals the full-logits cross-entropy, in value and in every gradient."""

from __future__ import annotations

import pytest
import torch

import affect_llm.modeling.answer_loss as answer_loss
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec
from affect_llm.modeling.answer_loss import IGNORE_INDEX, answer_token_loss
from affect_llm.modeling.trainable import LoraSettings, apply_lora

SPEC = ModelSpec(llm="tiny:llm", audio_encoder="tiny:whisper", face_encoder="tiny:fer", audio_window_seconds=4.0,
                 num_audio_tokens=4, num_face_tokens=2)


@pytest.fixture()
def lora_model():
    model, _ = build_model(SPEC, seed=0)
    apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter, so its gradients are not trivially zero
        for name, param in model.language_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def batch(model, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three right-padded rows whose answers start and end at different positions."""
    width = model.get_input_embeddings().weight.shape[1]
    vocab = model.get_input_embeddings().weight.shape[0]
    embeds = torch.randn(3, 12, width, generator=generator, requires_grad=True)  # (B, L, D)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 9:] = 0
    labels = torch.full((3, 12), IGNORE_INDEX)
    for row, (start, stop) in enumerate([(4, 12), (6, 9), (2, 7)]):
        labels[row, start:stop] = torch.randint(0, vocab, (stop - start,), generator=generator)
    return embeds, mask, labels


def reference(model, embeds, mask, labels) -> torch.Tensor:
    logits = model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits  # (B, L, V)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def grads(model, embeds, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.language_model.parameters() if p.requires_grad]  # the adapter
    assert params
    return list(torch.autograd.grad(loss, [embeds, *params]))


@pytest.mark.parametrize("chunk", [3, 512])
def test_value_and_gradients_match_the_full_logits(lora_model, monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(answer_loss, "CHUNK_TOKENS", chunk)  # 3: several chunks, one partly filled
    embeds, mask, labels = batch(lora_model, torch.Generator().manual_seed(0))
    expected = reference(lora_model, embeds, mask, labels)
    got = lora_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, sum_answer_loss=True,
                     use_cache=False).loss
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(grads(lora_model, embeds, got), grads(lora_model, embeds, expected), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_a_decoder_that_transforms_its_logits_goes_through_its_own_head(lora_model, monkeypatch) -> None:
    base = lora_model.language_model.get_base_model()
    monkeypatch.setattr(base.config, "logits_scaling", 1.0, raising=False)
    monkeypatch.setattr(base, "get_decoder", lambda: pytest.fail("the decoder was called on its own"))
    embeds, mask, labels = batch(lora_model, torch.Generator().manual_seed(0))
    got = answer_token_loss(lora_model.language_model, embeds, mask, labels, use_cache=False)
    torch.testing.assert_close(got, reference(lora_model, embeds, mask, labels), rtol=1e-5, atol=1e-5)


def test_a_batch_without_answer_tokens_has_zero_loss_and_a_graph(lora_model) -> None:
    embeds, mask, labels = batch(lora_model, torch.Generator().manual_seed(0))
    loss = answer_token_loss(lora_model.language_model, embeds, mask, torch.full_like(labels, IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and embeds.grad is not None


def test_only_the_chunks_before_the_last_are_recomputed(lora_model, monkeypatch) -> None:
    monkeypatch.setattr(answer_loss, "CHUNK_TOKENS", 3)
    embeds, mask, labels = batch(lora_model, torch.Generator().manual_seed(0))
    answer_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())  # 8 + 3 + 5 = 16: six chunks
    chunks = -(-answer_tokens // 3)
    head = lora_model.language_model.get_base_model().get_output_embeddings()
    seen: list[int] = []
    head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    loss = answer_token_loss(lora_model.language_model, embeds, mask, labels, use_cache=False)
    assert len(seen) == chunks and sum(seen) == answer_tokens
    loss.backward()
    # The backward recomputes every chunk but the last, whose log-probabilities were kept.
    assert len(seen) == 2 * chunks - 1 and sum(seen[chunks:]) == answer_tokens - seen[chunks - 1]
