"""Attention for compiled decoding steps that reads grouped key/value heads as they are stored.

Shape letters: B batch rows, H query heads, K key/value heads, G = H / K query heads per key/value
head, L cached positions, D head width.

transformers' sdpa attention expands the key/value heads of a grouped-query LLM to one per query
head (``repeat_kv``) whenever it runs under ``torch.compile``; eagerly, for one query token, it
instead folds each group's query heads into query positions of their shared key/value head. A
compiled decoding step over a static cache then copies the whole cache, expanded G times, in every
layer of every step: for the embedded LLM (9 query heads, 3 key/value heads) at 32 rows and 384
positions, 1.7 GB written per step, which made compiled batches of 32 slower than eager ones. This
module registers transformers' sdpa attention under another name, with the eager folding also under
compilation; everything else goes to transformers' own function unchanged. Where transformers folds
eagerly (5.25, tested here), the eager outputs are sdpa's bit for bit; a release that expands the heads
under a mask eagerly too gives the same attention to float rounding.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_SDPA = "sdpa_grouped_decoding"


def grouped_decoding_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                               is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except that one query token per row under a mask reads the key/value
    heads unexpanded, compiled or not (as transformers' sdpa does eagerly).

    Args:
        module: The attention layer (its ``num_key_value_groups`` is G).
        query: (B, H, Q, D); only Q = 1 takes the folded path.
        key, value: (B, K, L, D), as the cache holds them.
        attention_mask: None, or a mask shared by the heads (B, 1, Q, L) or per head (B, H, Q, L).

    Returns:
        The attention output (B, Q, H, D) and no weights, as transformers' attention functions return.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    # Without a mask transformers' sdpa reads the groups itself (``enable_gqa``), compiled or not; with one,
    # eagerly, it folds them as below. Other devices (XPU, MPS, NPU) and a forced ``enable_gqa`` keep its choices.
    if (groups == 1 or query.shape[2] != 1 or attention_mask is None or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or query.device.type not in ("cpu", "cuda")
            or os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA", "0") == "1"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, width = query.shape
    folded = query.reshape(batch, heads // groups, groups, width)  # (B, K, G, D): a group's heads as positions
    mask = attention_mask  # not None here: without one sdpa reads the groups itself
    if mask.shape[1] != 1:  # per head: (B, H, 1, L) -> (B, K, G, L)
        mask = mask.reshape(mask.shape[0], heads // groups, groups, mask.shape[-1])
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    # The batch and width of the output: SDPA broadcasts a batch of 1, and values may be narrower than keys.
    return out.reshape(out.shape[0], heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None  # (B, 1, H, D)


def use_grouped_decoding_attention(language_model: torch.nn.Module) -> bool:
    """Switch an LLM that attends with ``sdpa`` over grouped key/value heads to :func:`grouped_decoding_attention`.

    The switch is registered with transformers (its mask is sdpa's) and set on the LLM's config, which
    its layers read at every forward. Other LLMs are left as they are.

    Returns:
        Whether the LLM now uses it.
    """
    config = language_model.config
    grouped = getattr(config, "num_key_value_heads", None) not in (None, getattr(config, "num_attention_heads", None))
    if config._attn_implementation == GROUPED_SDPA:
        return True
    if config._attn_implementation != "sdpa" or not grouped:
        return False
    AttentionInterface.register(GROUPED_SDPA, grouped_decoding_attention)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    config._attn_implementation = GROUPED_SDPA
    return True
