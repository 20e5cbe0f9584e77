"""Compiled decoding steps over a static KV cache, for :func:`~affect_llm.generation.batch_stream.stream_batch`.

``model.generate`` with a static cache and ``compile_config`` compiles the LLM's forward, but each
step still passes through ``generate``'s own loop (input preparation, logits processors, stopping
criteria, the mask grown by one column, so its shape changes every step and the graph is compiled
again with dynamic shapes): at batch 1 on the measured CPU that loop cost about as much per token as
the compiled graph saved. :class:`CompiledDecoder` keeps the loop in ``stream_batch`` and compiles
the one call that repeats: the LLM's forward on one token per row, with every shape fixed.

- The prompt's forward runs eagerly into ``stream_batch``'s own growing cache (its length differs
  from prompt to prompt, and compiling it would compile once per length); its keys and values are
  then copied into a :class:`~transformers.StaticCache` whose length is rounded up to a multiple of
  ``length_step``, so clips of different prompt lengths reuse one graph.
- The attention mask spans the whole static cache from the first step: the prompt's padding masked,
  every later position open (causality hides the positions not written yet). Its shape is that of
  the cache, so no step changes a shape.
- The last static cache is reused while batches keep its number of rows and length.

Under greedy decoding the tokens are those of the eager loop (tested on a tiny model). Rows that end
stay in the batch until the last one ends (a static cache has a fixed batch); their steps are not
handed out.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import CompileConfig, StaticCache
from transformers.cache_utils import Cache

# Static cache lengths are rounded up to this: clips whose prompt and budget fall in one step share a graph.
DEFAULT_LENGTH_STEP = 128


def compile_options(device: torch.device) -> dict[str, Any]:
    """``torch.compile`` arguments for the decoding step on ``device``.

    On CUDA, transformers' defaults for static-cache decoding (CUDA graphs). On a CPU, inductor with
    its C++ wrapper: the graph's two hundred small kernel and matmul calls per step are made from C++
    instead of Python.
    """
    if device.type == "cuda":
        return CompileConfig().to_dict()
    return {"fullgraph": True, "dynamic": False, "options": {"cpp_wrapper": True}}


def static_layers(config: Any) -> list:
    """The layers a static cache of ``config`` would have (one position long: only their kinds are read)."""
    return StaticCache(config=config, max_cache_len=1).layers


def supports_static_copy(config: Any) -> bool:
    """Whether every layer of the LLM attends to the whole context (no sliding window), as
    :meth:`CompiledDecoder.static_copy` assumes."""
    return not any(layer.is_sliding for layer in static_layers(config))


class CompiledDecoder:
    """The LLM's decoding step compiled once for fixed shapes, and the static caches it reads.

    Args:
        language_model: The LLM (a LoRA adapter merged first, or packed linear layers: both compile).
        cache_argument: The name its forward takes the cache by (``past_key_values`` in older transformers).
        length_step: Static cache lengths are multiples of this.
    """

    def __init__(self, language_model: torch.nn.Module, cache_argument: str = "cache",
                 length_step: int = DEFAULT_LENGTH_STEP) -> None:
        self.language_model = language_model
        self.cache_argument = cache_argument
        self.length_step = length_step
        device = next(language_model.parameters()).device
        self._compiled = torch.compile(language_model.__call__, **compile_options(device))
        # The last batch's cache, reused while batches keep its shape (a new one is allocated, not compiled
        # again, when they change back: the graph reads the cache as an input). One at a time: a batch of 64
        # rows of the embedded LLM at 512 positions holds 2.4 GB.
        self._cache: tuple[tuple[int, int], StaticCache] | None = None

    def step(self, cache: StaticCache, **inputs: Any) -> Any:
        """One decoding step on ``cache`` (one of :meth:`static_copy`'s): the LLM's output."""
        return self._compiled(**inputs, **{self.cache_argument: cache})

    def static_copy(self, cache: Cache, rows: int, budget: int) -> tuple[StaticCache, int]:
        """A static cache holding ``cache``'s keys and values, with room for ``budget`` more positions.

        Returns:
            The cache and its length (a multiple of ``length_step``).
        """
        if not supports_static_copy(self.language_model.config):
            raise ValueError("compiled decoding in stream_batch needs full-attention layers (a sliding window "
                             "layer keeps only its window): use model.generate with a static cache")
        filled = cache.get_seq_length()
        length = -(-(filled + budget) // self.length_step) * self.length_step
        if self._cache is None or self._cache[0] != (rows, length):
            self._cache = None  # released before the next one is allocated
            self._cache = ((rows, length), StaticCache(config=self.language_model.config, max_cache_len=length))
        static = self._cache[1]
        for source, target in zip(cache.layers, static.layers, strict=True):
            if not target.is_initialized:
                target.lazy_initialization(source.keys, source.values)
            target.keys[:, :, :filled].copy_(source.keys)
            target.values[:, :, :filled].copy_(source.values)
            # In place: the compiled graph reads this tensor's address.
            target.cumulative_length.fill_(filled)
        return static, length
