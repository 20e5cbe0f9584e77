"""Keys and values of recent shared prompt prefixes, kept from one batch to the next.

Every prompt of a task starts with the same tokens (the system prompt and the chat header, about 55
of the embedded default's 120 before the media): :func:`~affect_llm.generation.batch_stream.stream_batch`
computes them once per batch, but a batch of one (``explain --batch-size 1``, each turn of a chat, a
lone request to the server) computed them again for every answer. With decoding verified several
tokens a step that prefix was about two fifths of what a clip's prompt cost.

:class:`PrefixCache` keeps the keys and values of the last few prefixes, by their token ids. A new
batch's prefix reuses the longest run of leading tokens it shares with one of them and computes only
the rest. Prefix positions always start at 0 (rows are left-padded after the prefix), and the prefix
holds text tokens only (it ends before the first media placeholder), so its keys and values are a
function of its token ids and the LLM's weights alone. The weights must not change while a cache is
in use: its owner clears it when they do (:meth:`clear`; the hf backend's compiled step lays its
weights out anew).

A salt (a server request's ``cache_salt``, as vLLM names it) fences prefixes off: a prefix is
loaded only by a batch with the same salt as the batch that kept it, so clients that send different
salts never time each other's prompts through it (None is one salt like any other).

Where a prefix is loaded whole (the clips of a task) its keys and values are those computing it
would give, bit for bit. Where a kept prefix is loaded in part (a chat's next turn shares its
predecessor's prompt up to the new question) they came from a forward over a different number of
tokens, which a matmul may round differently in the last bits: an answer can then differ from one
decoded without the cache as far as that rounding reaches (a near tie between two tokens).

Shape letters: H key/value heads, P prefix positions, D head width.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

# Prefixes kept: a server answers a few tasks (each with its own system prompt) in turn.
DEFAULT_ENTRIES = 4
# Positions kept over all entries: a chat's prefix grows with the conversation, and for a 7B LLM with
# grouped key/value heads (32 layers, 8 heads of 128) 4,096 positions are about 0.5 GB in bfloat16.
DEFAULT_MAX_TOKENS = 4096


@dataclass(frozen=True)
class _Entry:
    """One prefix: its token ids, the salt of the batch that computed it, and per layer its
    ``(1, H, P, D)`` keys and values."""

    token_ids: tuple[int, ...]
    salt: str | None
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]


def _common_length(first: tuple[int, ...], second: list[int]) -> int:
    """How many leading tokens the two share."""
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


class PrefixCache:
    """The keys and values of the last ``entries`` shared prompt prefixes, most recent first.

    Safe to share between threads (a chat turn still decoding while the next one starts): entries
    are replaced whole, never changed in place.

    Args:
        entries: Prefixes kept; the least recently used one goes first.
        max_tokens: Positions kept over all prefixes; the least recently used go first, and a longer
            prefix is not kept.
    """

    def __init__(self, entries: int = DEFAULT_ENTRIES, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.entries = entries
        self.max_tokens = max_tokens
        self._kept: list[_Entry] = []
        self._lock = threading.Lock()
        self.reused_tokens = 0  # prefix tokens loaded instead of computed, over this cache's life
        # Moved by clear(): a prefix computed before it (a batch still running while the compiled step
        # unpacked the weights) is not kept after it.
        self.generation = 0

    def __len__(self) -> int:
        """Prefixes kept."""
        return len(self._kept)

    def load(self, token_ids: list[int], cache: Cache, min_tokens: int = 1, salt: str | None = None) -> int:
        """Fill the empty ``cache`` with the longest kept run of ``token_ids``' leading tokens.

        Args:
            token_ids: The new batch's shared prefix.
            cache: A one-row cache with nothing in it yet.
            min_tokens: Load nothing when fewer tokens than this are shared.
            salt: Only prefixes kept under this salt are read.

        Returns:
            The positions loaded (0: compute the whole prefix).
        """
        if cache.get_seq_length():
            raise ValueError("PrefixCache.load fills an empty cache")
        with self._lock:
            matches = [(_common_length(entry.token_ids, token_ids), entry) for entry in self._kept
                       if entry.salt == salt]
            length, entry = max(matches, key=lambda match: match[0], default=(0, None))
            if entry is None or length < min_tokens:
                return 0
            self._kept.remove(entry)
            self._kept.insert(0, entry)
            self.reused_tokens += length
        for layer, (keys, values) in enumerate(zip(entry.keys, entry.values, strict=True)):
            cache.update(keys[:, :, :length], values[:, :, :length], layer)
        return length

    def store(self, token_ids: list[int], cache: Cache, generation: int | None = None,
              salt: str | None = None) -> None:
        """Keep the keys and values of ``token_ids``, the prefix ``cache`` (one row) holds, under ``salt``,
        unless a prefix kept under it already starts with all of them, it is longer than ``max_tokens``,
        or the cache was cleared since ``generation`` (read before the prefix was computed)."""
        length = len(token_ids)
        if cache.get_seq_length() != length:
            raise ValueError(f"PrefixCache.store: the cache holds {cache.get_seq_length()} positions, "
                             f"the prefix has {length} tokens")
        if length > self.max_tokens or any(getattr(layer, "keys", None) is None for layer in cache.layers):
            return  # too long to keep, or layers that hold no keys of their own
        with self._lock:
            if any(entry.salt == salt and _common_length(entry.token_ids, token_ids) == length
                   for entry in self._kept):
                return
        # Copies: the cache's buffers go on to hold this batch's own tokens, and are repeated for its rows.
        entry = _Entry(tuple(token_ids), salt, tuple(layer.keys[:, :, :length].clone() for layer in cache.layers),
                       tuple(layer.values[:, :, :length].clone() for layer in cache.layers))
        with self._lock:
            if generation is not None and generation != self.generation:
                return
            # A prefix kept under the same salt that the new one extends is superseded by it.
            kept = [old for old in self._kept
                    if old.salt != salt or _common_length(old.token_ids, token_ids) < len(old.token_ids)]
            self._kept, total = [entry], length
            for old in kept[: self.entries - 1]:
                total += len(old.token_ids)
                if total > self.max_tokens:
                    break
                self._kept.append(old)

    def clear(self) -> None:
        """Forget every prefix (the LLM's weights or their layout changed)."""
        with self._lock:
            self._kept = []
            self.generation += 1
