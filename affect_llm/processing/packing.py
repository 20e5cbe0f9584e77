"""Training batches packed into fewer rows: several samples side by side in one row, each attending
only to itself.

A padded batch is as long as its longest sample in every row: the embedded reason stage mixes label
answers of about 105 tokens with explanations of up to about 260, and 27% of its padded positions
were padding. Packed, a row holds several samples one after another; each sample's position ids
start again at 0, and transformers, given position ids that restart and no 2D attention mask,
builds a block-diagonal causal mask from them (``masking_utils.find_packed_sequence_indices``), for
every attention implementation. A sample thus sees exactly the tokens and positions it would see in
its own row: the same samples, the same answer tokens, the same loss, on fewer positions.

Shape letters: R rows, L positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from affect_llm.modeling.media import MediaInputs
from affect_llm.processing.processor import IGNORE_INDEX

# A row's width grows in steps of this many positions until the samples fit in the rows allowed.
_WIDTH_STEP = 8
# Key of a packed batch's mark (a boolean tensor, so that it travels with the batch to any device
# and through the loader's pinning): position ids alone do not say a batch is packed, since a
# left-padded batch carries them too and needs its 2D mask.
PACKED_KEY = "packed"


def plan_rows(lengths: Sequence[int], max_rows: int) -> list[list[int]]:
    """Indices of ``lengths`` per row: at most ``max_rows`` rows, none longer than needed.

    First fit, longest first, into rows as wide as the longest sample or the even share
    ``ceil(total / max_rows)``, whichever is more, widened until every sample has a row. Attention
    costs a row's width squared, so a few rows of moderate width beat one long row where the
    attention kernel computes every block of the mask (eager attention on a CPU).
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    width = max(max(lengths), math.ceil(sum(lengths) / max_rows))
    while True:
        rows: list[list[int]] = []
        used: list[int] = []
        for index in order:
            slot = next((r for r, filled in enumerate(used) if filled + lengths[index] <= width), None)
            if slot is None:
                rows.append([index])
                used.append(lengths[index])
            else:
                rows[slot].append(index)
                used[slot] += lengths[index]
        if len(rows) <= max_rows:
            return rows
        width += _WIDTH_STEP


def collate_packed(items: Sequence[dict[str, Any]], max_rows: int, pad_id: int) -> dict[str, Any]:
    """Items (``input_ids``, ``labels``, ``media``) -> a batch of at most ``max_rows`` packed rows.

    The batch has ``input_ids``, ``labels`` and ``position_ids`` ``(R, L)``, ``attention_mask``
    ``(R, L)`` (1 on the samples' tokens; for counting them: pass the model no 2D mask, or it
    would mask padding only), ``media`` in the order the rows hold their samples, which is the
    order the model fills media placeholders in, and :data:`PACKED_KEY` (true), which
    :func:`~affect_llm.training.step.answer_loss` reads and removes. Padding at a row's end continues the row's last
    sample's positions and trains nothing; no token of a sample comes after it, so none sees it.
    """
    rows = plan_rows([len(item["input_ids"]) for item in items], max_rows)
    width = max(sum(len(items[i]["input_ids"]) for i in row) for row in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        PACKED_KEY: torch.tensor(True),
    }
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            item = items[index]
            n = len(item["input_ids"])
            span = slice(start, start + n)
            batch["input_ids"][r, span] = torch.tensor(item["input_ids"])
            batch["labels"][r, span] = torch.tensor(item["labels"])
            batch["position_ids"][r, span] = torch.arange(n)
            batch["attention_mask"][r, span] = 1
            start += n
        last = len(items[row[-1]]["input_ids"])
        batch["position_ids"][r, start:] = torch.arange(last, last + width - start)
    batch["media"] = MediaInputs.concat([items[i].get("media") or MediaInputs() for row in rows for i in row])
    return batch
