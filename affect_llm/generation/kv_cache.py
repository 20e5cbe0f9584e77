"""A KV cache that grows in place: keys and values are written into room reserved ahead.

transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, which copies
the whole cache of every layer at every step: at batch 32 on a CPU that copy took about a sixth of
decoding. A ``StaticCache`` avoids the copy but fixes the batch, so rows that end cannot leave it.
:class:`GrowingCache` keeps the dynamic cache's interface (rows leave with ``batch_select_indices``,
a shared prefix is repeated with ``batch_repeat_interleave``) and stores each layer in a buffer with
room for ``reserve`` more positions; a step writes its keys into the room and attention reads a view
of the filled part. When the room runs out the buffer is reallocated with twice the length, so the
copies cost O(log n) instead of O(n) per generated token.

Shape letters: B rows, H key/value heads, S positions, D head width.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Room reserved past the prompt on the first write: a typical answer fits without reallocation.
DEFAULT_RESERVE = 256


class GrowingLayer(DynamicLayer):
    """One layer's keys and values in ``(B, H, capacity, D)`` buffers, the first ``length`` positions filled."""

    reserve = DEFAULT_RESERVE

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.value_buffer = None
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``(B, H, s, D)`` new states after the filled ones; returns views of all ``length + s``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.key_buffer is None or self.length + new > self.key_buffer.shape[-2]:
            self._reallocate(key_states, value_states, self.length + new)
        end = self.length + new
        self.key_buffer[:, :, self.length:end].copy_(key_states)
        self.value_buffer[:, :, self.length:end].copy_(value_states)
        self.length = end
        self._use_buffers(self.key_buffer, self.value_buffer)
        return self.keys, self.values

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        """New buffers of at least ``needed`` positions plus room (twice the old size when growing)."""
        old = 0 if self.key_buffer is None else self.key_buffer.shape[-2]
        capacity = max(needed + self.reserve, 2 * old)
        batch, heads, _, width = key_states.shape
        keys = key_states.new_empty(batch, heads, capacity, width)
        values = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
        if self.length:
            keys[:, :, :self.length].copy_(self.keys)
            values[:, :, :self.length].copy_(self.values)
        self.key_buffer, self.value_buffer = keys, values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        self.length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop({tokens_to_remove}): pass a negative count of positions to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(0, self.length + tokens_to_remove)
        self._use_buffers(self.key_buffer, self.value_buffer)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._use_buffers(self.key_buffer.repeat_interleave(repeats, dim=0),
                              self.value_buffer.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._use_buffers(self.key_buffer[indices], self.value_buffer[indices])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() > 0:
            beam_idx = beam_idx.to(self.key_buffer.device)
            self._use_buffers(self.key_buffer.index_select(0, beam_idx), self.value_buffer.index_select(0, beam_idx))

    def _use_buffers(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor) -> None:
        """Hold these buffers; ``keys`` and ``values`` (what attention reads) are views of their filled part."""
        self.key_buffer, self.value_buffer = key_buffer, value_buffer
        self.keys = key_buffer[:, :, :self.length]
        self.values = value_buffer[:, :, :self.length]


class GrowingCache(Cache):
    """A dynamic KV cache of :class:`GrowingLayer` (one per decoder layer, created on first use)."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=GrowingLayer)
