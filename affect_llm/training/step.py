"""One training step's pieces, shared by the recipe and the benchmarks: the loss (summed answer-token
cross-entropy, computed only where answers are) and the optimizer.

Shape letters: B batch, L tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from affect_llm.processing.packing import PACKED_KEY
from affect_llm.processing.processor import IGNORE_INDEX


def answer_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer-token cross-entropy of a batch and its token count (``labels`` and the packed
    mark are popped).

    Only positions that predict an answer token reach the vocabulary projection, a chunk at a time
    (:mod:`affect_llm.modeling.answer_loss`): the logits of every prompt position, or of a whole
    batch at once, would otherwise dominate memory. No KV cache: a training forward never decodes further.
    """
    labels = batch.pop("labels")  # (B, L)
    if bool(batch.pop(PACKED_KEY, False)):
        # Packed rows (affect_llm.processing.packing): without a 2D mask transformers builds each
        # sample's own causal block from the restarting position ids; the 2D mask marks only padding.
        batch = {key: value for key, value in batch.items() if key != "attention_mask"}
    loss_sum = model(**batch, labels=labels, sum_answer_loss=True, use_cache=False).loss
    return loss_sum, (labels[:, 1:] != IGNORE_INDEX).sum()


def build_optimizer(param_groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with its fused kernel: a few kernels per step instead of about ten small ones per tensor.

    A LoRA curriculum trains hundreds of small tensors (two per adapted projection and layer); the
    per-tensor launches matter on GPUs. On the 2-core CPU the two measured alike (about 0.2-0.3 s a
    step for the embedded model's LoRA and projectors).
    """
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=True)
