"""``GrowingCache``: the same keys and values as transformers' ``DynamicCache`` through every operation."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from affect_llm.generation.kv_cache import GrowingCache, GrowingLayer


def states(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(B, H=2, S, D=4)`` keys and values."""
    return torch.randn(batch, 2, length, 4, generator=generator), torch.randn(batch, 2, length, 4, generator=generator)


def assert_same(growing: GrowingCache, dynamic: DynamicCache) -> None:
    assert growing.get_seq_length() == dynamic.get_seq_length()
    for mine, theirs in zip(growing.layers, dynamic.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


@pytest.mark.parametrize("reserve", [1, 3, 256])
def test_updates_selection_repetition_and_crop_match_the_dynamic_cache(monkeypatch, reserve: int) -> None:
    monkeypatch.setattr(GrowingLayer, "reserve", reserve)
    generator = torch.Generator().manual_seed(0)
    growing, dynamic = GrowingCache(), DynamicCache()

    def update(batch: int, length: int) -> None:
        for layer in range(2):
            keys, values = states(batch, length, generator)
            mine = growing.update(keys, values, layer)
            theirs = dynamic.update(keys, values, layer)
            assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])

    update(1, 5)  # a shared prefix ...
    growing.batch_repeat_interleave(3)
    dynamic.batch_repeat_interleave(3)
    update(3, 4)  # ... then each row's own prompt
    for _ in range(6):  # decoding steps, past the reserved room when it is small
        update(3, 1)
    assert_same(growing, dynamic)
    keep = torch.tensor([0, 2])  # a row ends
    growing.batch_select_indices(keep)
    dynamic.batch_select_indices(keep)
    update(2, 1)
    assert_same(growing, dynamic)
    growing.crop(-2)
    dynamic.crop(-2)
    update(2, 1)
    assert_same(growing, dynamic)


def test_a_step_writes_in_place_while_there_is_room() -> None:
    cache = GrowingCache()
    generator = torch.Generator().manual_seed(1)
    cache.update(*states(2, 3, generator), 0)
    buffer = cache.layers[0].key_buffer
    for _ in range(5):
        cache.update(*states(2, 1, generator), 0)
    assert cache.layers[0].key_buffer is buffer and cache.get_seq_length() == 8
