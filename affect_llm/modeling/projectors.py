"""Projectors: encoder features of one media item -> exactly ``N`` LLM-width tokens.

A fixed token count per item keeps the processor's placeholder expansion independent of clip
length. ``linear`` and ``mlp`` pool the valid time steps into ``N`` segments first; ``attention``
lets ``N`` learned queries attend over all valid steps.

Shape letters: B items, T encoder steps, N output tokens, D_enc encoder width, D LLM width.
"""

from __future__ import annotations

import torch
from torch import nn


def segment_pooling_weights(mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Weights that average the valid steps of each item into ``num_tokens`` equal segments.

    Args:
        mask: ``(B, T)`` bool, True on valid steps (assumed to be a prefix).

    Returns:
        ``(B, N, T)`` weights; each row sums to 1. An item shorter than ``N`` steps repeats steps.
    """
    lengths = mask.sum(-1).clamp(min=1).float()  # (B,)
    steps = torch.arange(mask.shape[1], device=mask.device).float()  # (T,)
    segment = torch.arange(num_tokens, device=mask.device).float()  # (N,)
    start = (segment[None, :] * lengths[:, None] / num_tokens).floor()  # (B, N)
    end = torch.maximum(((segment[None, :] + 1) * lengths[:, None] / num_tokens).ceil(), start + 1)
    inside = (steps[None, None, :] >= start[..., None]) & (steps[None, None, :] < end[..., None])
    weights = inside.float()
    return weights / weights.sum(-1, keepdim=True)


# The input gain of a projector that reads a face encoder's 7 expression logits. Adam moves a
# layer's outputs by about the learning rate times the L1 norm of its input: 7 standardised numbers
# have about a nineteenth of the L1 norm of the encoder's pooled output (135 layer-normalised
# numbers), and trained with a gain of 1 the embedded default's face tokens ended about ten times
# smaller than the pooled projector's (norm 15-31 against 175-280 for 4 tokens), which the LLM read
# as no face at all (held-out image-only clips 0.25, every drawn happy face "neutral").
EXPRESSION_LOGITS_GAIN = 16.0


class MediaProjector(nn.Module):
    """Map ``(B, T, D_enc)`` features with a validity mask to ``(B, N, D)`` tokens."""

    def __init__(self, kind: str, encoder_dim: int, llm_dim: int, num_tokens: int, num_heads: int = 4,
                 normalize_items: bool = True, input_gain: float = 1.0) -> None:
        """
        Args:
            normalize_items: Layer-normalise each standardised feature vector. Off for a few class
                logits: normalising 7 numbers across themselves discards how strongly each class is
                read (an MLP probe on standardised FER logits of drawn faces, three seeds: 0.90-0.91
                held out and 3 of 3 real photos without it, 0.83-0.84 and 1 or 2 of 3 with it).
            input_gain: Multiplies the standardised features. Adam moves every weight by about the
                learning rate, so the first layer's outputs move ``input_gain`` times faster; for a
                few features (see ``EXPRESSION_LOGITS_GAIN``).
        """
        super().__init__()
        self.kind = kind
        self.num_tokens = num_tokens
        # Per-dimension statistics of the encoder's features on the training data (see calibrate):
        # frozen encoders put most of their variance in directions shared by every clip, and
        # standardising makes the directions that tell clips apart visible from the first step.
        self.register_buffer("feature_mean", torch.zeros(encoder_dim))
        self.register_buffer("feature_std", torch.ones(encoder_dim))
        # Encoder features differ in scale by orders of magnitude (CNN logits vs transformer states).
        self.input_norm = nn.LayerNorm(encoder_dim) if normalize_items else nn.Identity()
        self.input_gain = input_gain
        if kind == "linear":
            self.proj = nn.Linear(encoder_dim, llm_dim)
        elif kind == "mlp":
            self.proj = nn.Sequential(nn.Linear(encoder_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
        elif kind == "attention":
            heads = num_heads if llm_dim % num_heads == 0 else 1
            self.key_proj = nn.Linear(encoder_dim, llm_dim)
            self.queries = nn.Parameter(torch.randn(num_tokens, llm_dim) * 0.02)
            self.attention = nn.MultiheadAttention(llm_dim, heads, batch_first=True)
            self.proj = nn.Sequential(nn.LayerNorm(llm_dim), nn.Linear(llm_dim, llm_dim), nn.GELU(),
                                      nn.Linear(llm_dim, llm_dim))
        else:
            raise ValueError(f"unknown projector kind {kind!r}: expected linear, mlp or attention")

    @torch.no_grad()
    def calibrate(self, features: list[torch.Tensor]) -> None:
        """Set the standardisation from per-item ``(T, D_enc)`` features of the training data."""
        stacked = torch.cat([f.float() for f in features])  # (sum T, D_enc)
        self.feature_mean.copy_(stacked.mean(0))
        self.feature_std.copy_(stacked.std(0).clamp(min=1e-4))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.input_norm((features - self.feature_mean) / self.feature_std)
        if self.input_gain != 1.0:
            features = features * self.input_gain
        if self.kind == "attention":
            keys = self.key_proj(features)  # (B, T, D)
            queries = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)  # (B, N, D)
            attended, _ = self.attention(queries, keys, keys, key_padding_mask=~mask, need_weights=False)
            # The residual on the pooled segments keeps a direct path from every part of the clip.
            pooled = segment_pooling_weights(mask, self.num_tokens) @ keys  # (B, N, D)
            return self.proj(attended + pooled)
        pooled = segment_pooling_weights(mask, self.num_tokens).to(features.dtype) @ features  # (B, N, D_enc)
        return self.proj(pooled)
