"""Fully sharded data parallel (FSDP2) by the recipe itself, on GPUs and on CPUs alike.

An accelerate config with ``distributed_type: FSDP`` asks for sharding. accelerate shards only on
accelerators: on CPU processes it falls back to plain data parallel without a word. So the recipe
reads the request (``ACCELERATE_USE_FSDP``, which ``accelerate launch`` sets from the config) and
shards the model with ``torch.distributed.fsdp.fully_shard`` itself: one unit per transformer
layer of the LLM and the encoders, one per projector, and the rest (embeddings, head) at the root.
The same code then runs on a laptop's two CPU processes (gloo) and on a node of GPUs (NCCL), and
its resume is tested where no GPU is.

Frozen and trainable weights share units (LoRA inside frozen layers); FSDP2 allows it. A 4-bit
LLM cannot be sharded: bitsandbytes' packed weights are not plain tensors.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (``accelerate launch`` with ``distributed_type: FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of every ``ModuleList`` of two or more modules of one class (transformer layers)."""
    blocks = []
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) > 1 and len({type(m) for m in child}) == 1:
            blocks.extend(m for m in child if any(True for _ in m.parameters()))
    return blocks


def shard_model(model: Any) -> Any:
    """Shard ``model`` in place across the default process group with FSDP2; returns it.

    Raises:
        ValueError: The LLM is held in 4-bit.
    """
    from torch.distributed.fsdp import fully_shard

    if getattr(model.language_model, "is_loaded_in_4bit", False):
        raise ValueError("FSDP cannot shard a 4-bit LLM: use DDP (training/accelerate/multi_gpu_ddp.yaml) "
                         "for QLoRA, or a bf16 LLM (training/gpu_7b_lora_bf16.yaml) with FSDP")
    for part in (model.language_model, *model.encoders.values()):
        for block in repeated_blocks(part):
            fully_shard(block)
    for projector in model.projectors.values():
        fully_shard(projector)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors of a sharded model on the CPU of the main process (every process must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
