"""Load a checkpoint once and hand model and processor to the backend that was asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from affect_llm.generation.backend import GenerationBackend
from affect_llm.precision import Precision

BACKENDS = ("hf", "vllm")


def load_backend(
    name: str, checkpoint: str | Path, models_dir: Path | None = None, precision: Precision | None = None,
    rows: int = 1, compiled: bool = False, **engine_options: Any,
) -> GenerationBackend:
    """Build a backend by name from a checkpoint folder.

    Args:
        name: ``hf`` (the composite model's own ``generate``) or ``vllm`` (prompt embeddings into vLLM).
        precision: How to hold the weights; None follows what the checkpoint records.
        rows: Rows ``hf`` will mostly decode at once (a batch job's batch size, 1 for a chat): on a CPU
            its weight layout is chosen by measuring at this many (:class:`HFBackend
            <affect_llm.generation.hf_backend.HFBackend>`).
        compiled: Every answer decodes through ``hf``'s compiled step. On a CPU, below
            ``PACKED_COMPILE_MIN_ROWS`` rows it lays out the weights itself
            (:mod:`affect_llm.generation.compiled_step`), so the eager layout is neither measured nor
            made; from there on it runs over the packed layers where packing measures faster.
        **engine_options: vLLM engine options (``vllm_python``, ``dtype``, ``gpu_memory_utilization``, ...).

    Raises:
        ValueError: For an unknown backend name, or engine options given to ``hf``.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "hf":
        if engine_options:
            raise ValueError(f"backend 'hf' takes no engine options (got {sorted(engine_options)})")
        from affect_llm.generation.compiled_step import PACKED_COMPILE_MIN_ROWS
        from affect_llm.generation.hf_backend import HFBackend
        from affect_llm.loading.checkpoint import load_checkpoint

        model, processor = load_checkpoint(checkpoint, models_dir, precision=precision, device=device)
        frozen = compiled and rows < PACKED_COMPILE_MIN_ROWS
        return HFBackend(model, processor, pack_weights=False if frozen else None, rows=rows)
    if name == "vllm":
        from affect_llm.generation.vllm_backend import VLLMBackend
        from affect_llm.loading.checkpoint import load_prompt_embedder, served_llm_dir

        model, processor = load_prompt_embedder(checkpoint, models_dir, precision=precision, device=device)
        return VLLMBackend(model, processor, served_llm_dir(checkpoint, models_dir), **engine_options)
    raise ValueError(f"unknown backend {name!r}: expected one of {BACKENDS}")
