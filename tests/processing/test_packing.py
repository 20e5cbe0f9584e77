"""Packed training rows: the same loss and gradients as one padded row per sample, on fewer positions."""

from __future__ import annotations

import pytest
import torch

from affect_llm.modeling.trainable import set_llm_attention
from affect_llm.processing.packing import collate_packed, plan_rows
from affect_llm.training.step import answer_loss


def test_rows_hold_every_sample_once_within_the_row_limit() -> None:
    lengths = [260, 105, 105, 190, 145, 230, 110, 150]
    for max_rows in (1, 2, 4, 8):
        rows = plan_rows(lengths, max_rows)
        assert len(rows) <= max_rows
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    four = plan_rows(lengths, 4)
    widest = max(sum(lengths[i] for i in row) for row in four)
    assert widest * len(four) < max(lengths) * len(lengths)  # fewer positions than padding each sample
    # With rows to spare, none is wider than the longest sample; shorter ones share rows.
    assert plan_rows(lengths, 8) == [[0], [5], [3], [7, 6], [4, 1], [2]]
    assert plan_rows([], 4) == []
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        plan_rows(lengths, 0)


def _items(processor, raw_media) -> list[dict]:
    """Samples of different lengths and media: audio and face, audio only, no media, face only."""
    answers = ['{"labels": ["happy"]}', '{"explanation": "The voice is loud and fast, the face smiles.", '
               '"labels": ["happy", "surprised"]}', '{"labels": ["sad"]}', '{"labels": ["neutral", "calm"]}']
    layouts = [("audio", "face"), ("audio",), (), ("face",)]
    items = []
    for answer, modalities in zip(answers, layouts, strict=True):
        media = processor.prepare_media(**{m: raw_media[m] for m in modalities}) if modalities else None
        item = processor.encode_text(processor.build_messages("perceive", modalities, transcript="I see."), answer)
        items.append({**item, "media": media})
    return items


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_rows_give_the_padded_batch_loss_and_gradients(tiny_lora_model, raw_media, attention: str) -> None:
    model, processor = tiny_lora_model
    set_llm_attention(model, attention)
    items = _items(processor, raw_media)

    def loss_and_gradients(batch: dict) -> tuple[float, int, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss, count = answer_loss(model, dict(batch))
        loss.backward()
        return loss.item(), int(count), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded = processor.collate(items)
    packed = collate_packed(items, max_rows=2, pad_id=processor.tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] == 2 and packed["input_ids"].numel() < padded["input_ids"].numel()
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum())  # the samples' tokens
    loss, count, gradients = loss_and_gradients(padded)
    packed_loss, packed_count, packed_gradients = loss_and_gradients(packed)
    assert packed_count == count
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    assert packed_gradients.keys() == gradients.keys()
    for name, grad in gradients.items():
        torch.testing.assert_close(packed_gradients[name], grad, rtol=1e-4, atol=1e-5, msg=lambda detail, name=name: f"{name}: {detail}")
    # Without restarting positions the samples would read each other: the loss moves.
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])}
    assert loss_and_gradients(leaky)[0] != pytest.approx(loss, rel=1e-5)
