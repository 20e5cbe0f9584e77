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


def _left_padded(batch: dict, pad_id: int) -> dict:
    """The same samples with their padding moved to the left."""
    lengths = batch["attention_mask"].sum(-1)
    width = batch["input_ids"].shape[1]
    left = {"input_ids": torch.full_like(batch["input_ids"], pad_id),
            "labels": torch.full_like(batch["labels"], -100),
            "attention_mask": torch.zeros_like(batch["attention_mask"]), "media": batch["media"]}
    for r, n in enumerate(lengths.tolist()):
        for key in ("input_ids", "labels", "attention_mask"):
            left[key][r, width - n:] = batch[key][r, :n]
    return left


def test_only_marked_batches_lose_their_mask(tiny_lora_model, raw_media) -> None:
    """Position ids alone do not make a batch packed: a left-padded batch that carries them keeps
    its 2D mask. Here they count through the padding, so without the mask (as if packed) the
    samples would read the padding before them and the loss would move."""
    model, processor = tiny_lora_model
    set_llm_attention(model, "eager")
    items = _items(processor, raw_media)
    padded = processor.collate(items)
    assert "packed" not in padded
    left = _left_padded(padded, processor.tokenizer.pad_token_id)
    positions = torch.arange(left["input_ids"].shape[1]).expand_as(left["input_ids"])
    with torch.no_grad():
        masked = answer_loss(model, dict(left))[0].item()  # transformers counts positions the same way
        assert answer_loss(model, {**left, "position_ids": positions})[0].item() == pytest.approx(masked, rel=1e-6)
        unmasked = answer_loss(model, {**left, "position_ids": positions, "packed": torch.tensor(True)})[0].item()
    assert unmasked != pytest.approx(masked, rel=1e-5)
    packed = collate_packed(items, max_rows=2, pad_id=processor.tokenizer.pad_token_id)
    assert bool(packed["packed"])
