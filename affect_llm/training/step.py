"""One training step's pieces, shared by the recipe and the benchmarks: the loss (summed answer-token
cross-entropy, computed only where answers are) and the optimizer.

Shape letters: B batch, L tokens, P answer positions, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

from affect_llm.processing.processor import IGNORE_INDEX


def answer_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer-token cross-entropy of a batch and its token count (``labels`` is popped)."""
    labels = batch.pop("labels")  # (B, L)
    # Only positions that predict an answer token need logits: the vocabulary projection of
    # every prompt position would otherwise dominate memory and time for short answers.
    positions = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)  # (P,)
    # No KV cache: a training forward never decodes further, and building one costs time and memory.
    logits = model(**batch, logits_to_keep=positions, use_cache=False).logits  # (B, P, V)
    targets = labels[:, positions + 1]
    loss_sum = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss_sum, (targets != IGNORE_INDEX).sum()


def build_optimizer(param_groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with its fused kernel: a few kernels per step instead of about ten small ones per tensor.

    A LoRA curriculum trains hundreds of small tensors (two per adapted projection and layer); the
    per-tensor launches matter on GPUs. On the 2-core CPU the two measured alike (about 0.2-0.3 s a
    step for the embedded model's LoRA and projectors).
    """
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=True)
