"""Compiled decoding steps over a static KV cache, for :func:`~affect_llm.generation.batch_stream.stream_batch`.

``model.generate`` with a static cache and ``compile_config`` compiles the LLM's forward, but each
step still passes through ``generate``'s own loop (input preparation, logits processors, stopping
criteria, the mask grown by one column, so its shape changes every step and the graph is compiled
again with dynamic shapes): at batch 1 on the measured CPU that loop cost about as much per token as
the compiled graph saved. :class:`CompiledDecoder` keeps the loop in ``stream_batch`` and compiles
the one call that repeats: the LLM's forward on one token per row, whose shapes stay fixed over a
batch.

- The prompt's forward runs eagerly into ``stream_batch``'s own growing cache (its length differs
  from prompt to prompt, and compiling it would compile once per length); its keys and values are
  then copied into a :class:`~transformers.StaticCache` whose length is rounded up to a multiple of
  ``length_step``.
- The attention mask spans the whole static cache from the first step: the prompt's padding masked,
  every later position open (causality hides the positions not written yet). Its shape is that of
  the cache, so no step of a batch changes a shape.
- By default the first batch's shape compiles a static graph; the first other shape (rows or cache
  length) compiles once more with symbolic sizes, and that graph serves every shape after it: a chat
  whose context grows turn by turn, or a batch job's smaller last batch, compiles twice in all. A
  server, whose batches take every size, compiles with symbolic sizes from the start
  (``dynamic=True``) and ahead of its first request (:meth:`HFBackend.compile_ahead
  <affect_llm.generation.hf_backend.HFBackend.compile_ahead>`).
- The last static cache is reused while batches keep its number of rows and length.
- On a CPU the step compiles in one of two ways, by the rows it will mostly decode:
  - few rows (``keep_packed`` false): with inductor's freezing and GEMM autotuning
    (:data:`CPU_INDUCTOR_SETTINGS`): the weights become constants of the graph, laid out once for
    its matmuls, and each layer shape's matmul is the fastest of inductor's C++ template and MKL's or
    oneDNN's call, timed at the compile. The LLM's layers packed by
    :func:`~affect_llm.generation.packed_linear.pack_linear_layers` are unpacked first (an opaque op
    inductor neither freezes nor tunes). A decoder then serves a model whose weights no longer change
    (the hf backend's, LoRA merged or attached).
  - many rows (``keep_packed`` true, the LLM's layers packed): the packed layers stay, the graph
    calls their oneDNN matmul as it stands, and inductor fuses the work between the matmuls, without
    freezing.
  On the Zen 4 cores, the embedded LLM, a decoding step with a static cache rounded to 16 positions
  (one run each, medians of 3): one row 22.4 ms frozen against 36.3 ms over packed layers (43.5 ms
  eager); 8 rows 40.6 against 44.0 ms (58.3 eager); 16 rows 106.5 against 58.6 ms; 32 rows 129 ms
  frozen against about 80 ms over packed layers (about 100 eager). The prompt's forward, eager, runs on whichever layers the LLM
  holds: packed, it took 3.0 against 3.6 s for 32 prompts. The same greedy tokens in every case.

Under greedy decoding the tokens are those of the eager loop (tested on a tiny model). Rows that end
stay in the batch until the last one ends (a static cache has a fixed batch); their steps are not
handed out.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

import torch
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch._inductor import config as inductor_config
from transformers import CompileConfig, StaticCache
from transformers.cache_utils import Cache

from affect_llm.generation.grouped_attention import use_grouped_decoding_attention
from affect_llm.generation.packed_linear import packed_linear_layers, unpack_linear_layers

logger = logging.getLogger(__name__)

# Static cache lengths are rounded up to this. Every step's attention reads the whole cache, so a coarse
# step makes it read positions no row has: at 32 rows of the embedded LLM (prompts up to 125 tokens, 48 new
# ones) a step took about 80 ms over a cache rounded to 176 positions against about 103 ms over 256 (step
# 128). A new length costs a new cache, not a new graph once sizes are symbolic (see ``dynamic``).
DEFAULT_LENGTH_STEP = 16
# inductor's settings while the step compiles on a CPU (see the module's docstring). Set around each call
# rather than passed as ``torch.compile(options=...)``, where this torch's inductor did not freeze. The
# autotuner's timing tables and choice statistics go to stderr (a chat's terminal) unless turned off.
CPU_INDUCTOR_SETTINGS = {"freezing": True, "max_autotune": True, "autotune_num_choices_displayed": 0,
                         "max_autotune_report_choices_stats": False}
# inductor's settings on a CPU over packed layers: their weights are buffers of an op it does not lower.
CPU_PACKED_INDUCTOR_SETTINGS = {"freezing": False, "max_autotune": False}
# Rows from which compiled decoding on a CPU runs over the packed layers (where packing pays) instead of
# freezing plain ones: frozen was ahead at one row, even at 8 and far behind at 16 and 32 (the module's
# docstring).
PACKED_COMPILE_MIN_ROWS = 16


def compiles_over_packed_layers(language_model: torch.nn.Module, rows: int) -> bool:
    """Whether a step compiled for batches of ``rows`` should keep ``language_model``'s packed layers
    (``CompiledDecoder(keep_packed=...)``): from ``PACKED_COMPILE_MIN_ROWS`` rows on, where layers are packed."""
    return rows >= PACKED_COMPILE_MIN_ROWS and packed_linear_layers(language_model) > 0


def compile_options(device: torch.device, dynamic: bool | None = None) -> dict[str, Any]:
    """``torch.compile`` arguments for the decoding step on ``device``.

    On CUDA, transformers' defaults for static-cache decoding (CUDA graphs). On a CPU, inductor with
    its C++ wrapper: the graph's two hundred small kernel and matmul calls per step are made from C++
    instead of Python.

    Args:
        device: Where the LLM runs.
        dynamic: ``torch.compile``'s: None compiles the first shape static and the first change once
            more with the changed sizes symbolic, which then serves every shape (a chat's growing
            context, a batch job's last, smaller batch); True makes every size symbolic from the start
            but one row, which dynamo always compiles apart.
    """
    if device.type == "cuda":
        options = CompileConfig().to_dict()
        return options if dynamic is None else {**options, "dynamic": dynamic}
    return {"fullgraph": True, "dynamic": dynamic, "options": {"cpp_wrapper": True}}


def static_layers(config: Any) -> list:
    """The layers a static cache of ``config`` would have (one position long: only their kinds are read)."""
    return StaticCache(config=config, max_cache_len=1).layers


def supports_static_copy(config: Any) -> bool:
    """Whether every layer of the LLM attends to the whole context (no sliding window), as
    :meth:`CompiledDecoder.static_copy` assumes."""
    return not any(layer.is_sliding for layer in static_layers(config))


class CompiledDecoder:
    """The LLM's decoding step, compiled, and the static cache it reads.

    Args:
        language_model: The LLM (a LoRA adapter merged or attached), every layer attending to the whole
            context (:func:`supports_static_copy`); on a CPU, unless ``keep_packed``, its packed linear
            layers are unpacked, and its weights are read once, when the step compiles. One that attends
            with sdpa over grouped key/value heads is switched to
            :func:`~affect_llm.generation.grouped_attention.grouped_decoding_attention` (same answers).
        cache_argument: The name its forward takes the cache by (``past_key_values`` in older transformers).
        length_step: Static cache lengths are multiples of this.
        dynamic: Symbolic sizes from the first compile (True) or from the first change (None); see
            :func:`compile_options`.
        keep_packed: On a CPU, compile over the LLM's packed linear layers as they are, without
            freezing (for batches of many rows; see the module's docstring). Ignored elsewhere.

    Raises:
        ValueError: For an LLM with sliding-window layers, whose static copy would not hold the context.
    """

    def __init__(self, language_model: torch.nn.Module, cache_argument: str = "cache",
                 length_step: int = DEFAULT_LENGTH_STEP, dynamic: bool | None = None,
                 keep_packed: bool = False) -> None:
        if not supports_static_copy(language_model.config):
            raise ValueError("compiled decoding in stream_batch needs full-attention layers (a sliding window "
                             "layer keeps only its window): use model.generate with a static cache")
        # Under compilation transformers' sdpa would expand the grouped key/value heads of the whole static
        # cache in every layer of every step; this attention reads them as stored (the same answers).
        use_grouped_decoding_attention(language_model)
        self.language_model = language_model
        self.cache_argument = cache_argument
        self.length_step = length_step
        self.dynamic = dynamic
        device = next(language_model.parameters()).device
        self.on_cpu = device.type == "cpu"
        self.keep_packed = keep_packed and self.on_cpu
        self._inductor_settings = {}
        if self.keep_packed:
            self._inductor_settings = CPU_PACKED_INDUCTOR_SETTINGS
        elif self.on_cpu:
            self._inductor_settings = CPU_INDUCTOR_SETTINGS
            if unpacked := unpack_linear_layers(language_model):
                logger.info("compiled decoding: %d packed linear layers unpacked for inductor to lay out", unpacked)
            # Raised from inside inductor's autotuner (its own use of tensor.storage()), once per process.
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
        self._compiled = torch.compile(language_model.__call__, **compile_options(device, dynamic))
        # The last batch's cache, reused while batches keep its shape (a new one is allocated, not compiled
        # again, when they change back: the graph reads the cache as an input). One at a time: a batch of 64
        # rows of the embedded LLM at 512 positions holds 2.4 GB.
        self._cache: tuple[tuple[int, int], StaticCache] | None = None
        self._eager = False  # dynamo refused to compile again
        # One batch at a time: the static cache is shared (a chat turn still decoding in its thread
        # while the next starts would write into the cache the new turn just filled).
        self.lock = threading.Lock()

    def step(self, cache: StaticCache, **inputs: Any) -> Any:
        """One decoding step on ``cache`` (one of :meth:`static_copy`'s): the LLM's output.

        Where dynamo refuses to compile once more (its recompile limit, which counts every graph of
        the LLM's forward in the process), the step runs eagerly on the same cache, with a warning:
        the same tokens, more slowly, instead of a failed batch.
        """
        inputs[self.cache_argument] = cache
        if not self._eager:
            try:
                # Read when dynamo compiles (the first call of each graph); a cached graph ignores them.
                with inductor_config.patch(self._inductor_settings):
                    return self._compiled(**inputs)
            except FailOnRecompileLimitHit as refused:
                logger.warning("compiled decoding: %s; decoding eagerly from here on", str(refused).splitlines()[0])
                self._eager = True
        return self.language_model(**inputs)

    def static_copy(self, cache: Cache, rows: int, budget: int) -> tuple[StaticCache, int]:
        """A static cache holding ``cache``'s keys and values, with room for ``budget`` more positions.

        Returns:
            The cache and its length (a multiple of ``length_step``).
        """
        filled = cache.get_seq_length()
        length = -(-(filled + budget) // self.length_step) * self.length_step
        if self._cache is None or self._cache[0] != (rows, length):
            self._cache = None  # released before the next one is allocated
            self._cache = ((rows, length), StaticCache(config=self.language_model.config, max_cache_len=length))
        static = self._cache[1]
        for source, target in zip(cache.layers, static.layers, strict=True):
            if not target.is_initialized:
                target.lazy_initialization(source.keys, source.values)
                if self.on_cpu:
                    _plain_graph_inputs(target.keys, target.values, target.cumulative_length)
            target.keys[:, :, :filled].copy_(source.keys)
            target.values[:, :, :filled].copy_(source.values)
            # In place: the compiled graph reads this tensor's address.
            target.cumulative_length.fill_(filled)
        return static, length


def _plain_graph_inputs(*tensors: torch.Tensor) -> None:
    """Drop transformers' ``mark_static_address`` from a static cache's tensors.

    The mark fixes an address for CUDA graphs, which a CPU does not use. Marked, the tensors enter the
    graph as parameters do, and frozen graphs compiled with symbolic sizes then failed on a cache of
    another shape (an index out of bounds, a size asserted as the compile's); as plain inputs they
    are read from the cache each call.
    """
    for tensor in tensors:
        if hasattr(tensor, "_dynamo_static_input_type"):
            del tensor._dynamo_static_input_type
