"""Summed cross-entropy of the answer tokens, without holding a whole batch's logits.

A training batch of B answers in L positions would hold B x L x V logits, and as many again for
their log-probabilities and their gradient: with SmolLM2's 49,152-word vocabulary, batch 8 and 200
positions, about 315 MB each. Here the output projection runs only on the positions that predict an
answer token (each row its own, not the union over the batch), in chunks of :data:`CHUNK_TOKENS`,
and every chunk's logits but the last are recomputed in the backward pass instead of kept
(``torch.utils.checkpoint``): one chunk's logits are alive at a time, for the price of running the
output projection a second time on the answer positions of the earlier chunks.

Shape letters: B batch, L positions, N answer tokens, D LLM width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Label of a position that is not trained on (transformers' and torch's convention).
IGNORE_INDEX = -100
# Answer tokens per chunk of the output projection: 512 x 49,152 float32 logits are about 100 MB.
CHUNK_TOKENS = 512
# Config fields of decoders that change the logits after the output projection (soft-capping,
# scaling); those go through the model's own head instead.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def plain_output_head(config: Any) -> bool:
    """Whether the decoder's logits are its output projection alone."""
    return not any(getattr(config, name, None) for name in _LOGIT_TRANSFORMS)


def _chunk_loss(head: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(n, D)`` states, ``(n,)`` targets -> summed cross-entropy (float32)."""
    return nn.functional.cross_entropy(head(states).float(), targets, reduction="sum")


def answer_token_loss(
    language_model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
    labels: torch.Tensor, **kwargs: Any,
) -> torch.Tensor:
    """Sum over answer tokens of ``-log p(token)``; ``labels`` ``(B, L)`` hold ``IGNORE_INDEX`` elsewhere.

    ``language_model`` is the causal LM (a peft wrapper is looked through: its adapters live in the
    base model's layers); ``kwargs`` go to its decoder.
    """
    base = language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model
    answer = labels[:, 1:] != IGNORE_INDEX  # (B, L - 1): positions that predict an answer token
    if not plain_output_head(base.config):
        positions = answer.any(0).nonzero().squeeze(-1)  # (P,)
        logits = language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                logits_to_keep=positions, **kwargs).logits  # (B, P, V)
        targets = labels[:, positions + 1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum")
    hidden = base.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                **kwargs).last_hidden_state  # (B, L, D)
    states = hidden[:, :-1][answer]  # (N, D)
    targets = labels[:, 1:][answer]  # (N,)
    head = base.get_output_embeddings()
    total = states.sum().float() * 0.0  # keeps the graph when a batch has no answer token
    for start in range(0, targets.numel(), CHUNK_TOKENS):
        stop = start + CHUNK_TOKENS
        chunk = (states[start:stop], targets[start:stop])
        if stop >= targets.numel():
            # The last chunk's backward runs first, right after the forward: its log-probabilities
            # are alive at the same moment whether kept or recomputed, so keeping them costs no peak
            # memory and saves a second output projection and log-softmax (a batch of short answers
            # is a single chunk).
            total = total + _chunk_loss(head, *chunk)
        else:
            total = total + checkpoint(_chunk_loss, head, *chunk, use_reentrant=False)
    return total
