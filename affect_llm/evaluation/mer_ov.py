"""MER2024-OV scoring: set accuracy and recall of open-vocabulary labels after synonym grouping.

Definition (MER 2024 challenge, open-vocabulary track; MERTools ``MER2024/main-ov.py``): per
sample, labels are lower-cased and each is replaced by the first word of its synonym group; then
accuracy = |G∩P| / |P| and recall = |G∩P| / |G|, and a sample with no predicted label scores 0
for both. The figures are the means over samples, and the headline is their mean.

Groupings (every number in the report names the one that produced it):

- ``llm``: the published grouping. A chat judge groups the union of the two label sets with the
  published prompt, once per sample (cached). A sample whose grouping failed after the retries is
  counted in ``failed`` and left out of the means, never scored with another grouping.
- ``taxonomy``: this project's fine clusters (offline and deterministic; not the published one).
- ``exact``: no grouping: identical words only.

Samples whose reference has no label are counted in ``skipped`` (the published code would divide
by zero).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from affect_llm.evaluation import metrics
from affect_llm.evaluation.judge.mer_tasks import (
    group_heads,
    groups_task,
    load_mer_prompt,
    require_chat_judge,
)
from affect_llm.labels.taxonomy import DATA_PATH, Taxonomy, clean_word

Grouping = Literal["llm", "taxonomy", "exact"]
GROUPINGS: tuple[Grouping, ...] = ("llm", "taxonomy", "exact")


def taxonomy_ref() -> str:
    """``taxonomy.json#<hash12>``: which taxonomy grouped the labels."""
    return f"{DATA_PATH.name}#{hashlib.sha256(DATA_PATH.read_bytes()).hexdigest()[:12]}"


def lowered(labels: Sequence[str] | None) -> list[str]:
    """Lower-cased, stripped, non-empty labels (None for an unparseable answer gives [])."""
    return [w.lower().strip() for w in (labels or []) if w.strip()]


def set_accuracy_recall(gold: set[str], pred: set[str]) -> tuple[float, float]:
    """(|G∩P|/|P|, |G∩P|/|G|); (0, 0) when nothing was predicted. ``gold`` must not be empty."""
    if not pred:
        return 0.0, 0.0
    common = len(gold & pred)
    return common / len(pred), common / len(gold)


def _summary(values: list[tuple[float, float]], seed: int) -> dict[str, Any]:
    if not values:
        return {"accuracy": None, "recall": None, "avg": None, "ci": {}}
    accuracy = [a for a, _ in values]
    recall = [r for _, r in values]
    # The mean of the two means equals the mean of per-sample averages, so one bootstrap covers it.
    per_sample_avg = [(a + r) / 2 for a, r in values]
    return {
        "accuracy": float(np.mean(accuracy)),
        "recall": float(np.mean(recall)),
        "avg": float(np.mean(per_sample_avg)),
        "ci": {
            "accuracy": list(metrics.bootstrap_ci(accuracy, seed=seed)),
            "recall": list(metrics.bootstrap_ci(recall, seed=seed + 1)),
            "avg": list(metrics.bootstrap_ci(per_sample_avg, seed=seed + 2)),
        },
    }


def _static_grouper(grouping: Grouping, taxonomy: Taxonomy | None) -> Callable[[str], str]:
    if grouping == "exact":
        return lambda word: word
    if taxonomy is None:
        raise ValueError("taxonomy grouping needs a taxonomy")
    # A word the taxonomy does not know stays its own group, as in the published code.
    return lambda word: taxonomy.fine(word) or clean_word(word)


def score_mer_ov(
    pairs: Sequence[tuple[Sequence[str], Sequence[str] | None]],
    grouping: Grouping,
    judge: Any = None,
    taxonomy: Taxonomy | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """MER2024-OV accuracy, recall and their mean over ``(reference labels, predicted labels)``.

    Args:
        pairs: Reference labels and predicted labels (None for an unparseable answer) per sample.
        grouping: ``llm``, ``taxonomy`` or ``exact``.
        judge: A chat judge (``llm`` grouping only).
        taxonomy: The taxonomy (``taxonomy`` grouping only).
        seed: Bootstrap seed.

    Returns:
        ``grouping`` (what produced the numbers), ``accuracy``, ``recall``, ``avg``, ``ci``,
        ``count`` (samples in the means), ``skipped`` and ``failed``.

    Raises:
        ValueError: Unknown grouping, or ``llm`` without a chat judge.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"MER-OV grouping must be one of {GROUPINGS}, got {grouping!r}")
    samples = [(set(lowered(gold)), set(lowered(pred))) for gold, pred in pairs]
    scored = [(g, p) for g, p in samples if g]
    skipped = len(samples) - len(scored)
    failed, cached = 0, 0
    if grouping == "llm":
        chat = require_chat_judge(judge, "MER-OV llm grouping")
        prompt = load_mer_prompt()
        asked = [i for i, (_, p) in enumerate(scored) if p]
        answers = chat.ask_many([groups_task(prompt, sorted(scored[i][0] | scored[i][1])) for i in asked])
        heads: dict[int, dict[str, str] | None] = {}
        for index, answer in zip(asked, answers, strict=True):
            heads[index] = group_heads(answer.value) if answer.error is None else None
            failed += answer.error is not None
            cached += answer.cached
        values = []
        for index, (gold, pred) in enumerate(scored):
            table = heads.get(index, {})
            if table is None:
                continue
            values.append(
                set_accuracy_recall({table.get(w, w) for w in gold}, {table.get(w, w) for w in pred})
            )
        name = f"llm:{chat.identity}|{prompt.ref}"
    else:
        group = _static_grouper(grouping, taxonomy)
        values = [set_accuracy_recall({group(w) for w in g}, {group(w) for w in p}) for g, p in scored]
        name = "exact" if grouping == "exact" else f"taxonomy:fine|{taxonomy_ref()}"
    return {
        "grouping": name,
        **_summary(values, seed),
        "count": len(values),
        "skipped": skipped,
        "failed": failed,
        "cached": cached,
    }
