"""MER-UniBench scoring (AffectGPT): emotion-wheel OV scores, hit rate, sentiment WAF and accuracy.

Published definitions (AffectGPT ``my_affectgpt/evaluation/wheel.py``, ``ew_metric.py`` and
``evaluation-scoreonly.py``), reimplemented:

- Fine-grained (open-vocabulary) sets, e.g. OV-MERD+, MER2025-OV: on each of the five wheels,
  both label sets are mapped to wheel clusters (:mod:`affect_llm.labels.emotion_wheel`) and words
  that reach no cluster are dropped. A sample whose reference reaches none is skipped; otherwise
  P = |G∩P| / |P| and R = |G∩P| / |G| (both 0 when no predicted word remains). P and R are
  averaged over samples, F = 2PR / (P + R) is taken of those means, and F, P, R are averaged over
  the wheels. Reported at ``level1``; ``level2`` is given too.
- Basic-emotion sets, e.g. MER2023, MER2024, MELD, IEMOCAP: hit rate. On each wheel at
  ``level1``, a sample counts |G∩P| (1 when the reference's cluster is among the predicted ones),
  averaged over samples whose reference reaches a cluster (so ``neutral`` references, which reach
  none, are skipped), then over the wheels.
- Sentiment sets, e.g. CMU-MOSI, CMU-MOSEI, CH-SIMS: predicted labels -> positive / negative /
  neutral; samples whose reference valence is 0 are dropped; positive (> 0) against
  non-positive: weighted F1 (WAF) and accuracy.

Each set's headline is F (fine-grained), hit rate (basic) or WAF (sentiment); a table's last
column is their mean. Where this code departs from the published one, it is to record instead
of coerce: an unparseable answer or a sentiment that cannot be resolved counts as wrong and is
counted in ``unresolved`` (the published pipeline read an unreadable sentiment as neutral).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from affect_llm.evaluation import metrics
from affect_llm.evaluation.judge.mer_tasks import load_mer_prompt, require_chat_judge, sentiment_task
from affect_llm.evaluation.mer_ov import set_accuracy_recall, taxonomy_ref
from affect_llm.labels.emotion_wheel import WHEEL_NAMES, EmotionWheel, WheelLevel
from affect_llm.labels.taxonomy import Taxonomy

Task = Literal["ov", "basic", "sentiment"]
TASKS: tuple[Task, ...] = ("ov", "basic", "sentiment")
SentimentGrouping = Literal["llm", "taxonomy"]
HEADLINE = {"ov": "f1", "basic": "hit_rate", "sentiment": "waf"}
# Dataset names of MER-UniBench (lower-case, letters and digits only) and their kind.
KNOWN_TASKS: dict[str, Task] = {
    **dict.fromkeys(("mer2023", "mer2024", "meld", "iemocap", "iemocapfour"), "basic"),
    **dict.fromkeys(
        ("cmumosi", "mosi", "cmumosei", "mosei", "sims", "chsims", "simsv2", "chsimsv2"), "sentiment"
    ),
    **dict.fromkeys(("ovmerd", "ovmerdplus", "mer2025ov"), "ov"),
}
POSITIVE, NOT_POSITIVE = "positive", "not_positive"


@dataclass(frozen=True)
class Sample:
    """One scored pair.

    Attributes:
        source: Data set name of the reference row.
        labels: Reference labels.
        valence: Reference sentiment score (sentiment sets), or None.
        predicted: Predicted labels, or None when the answer did not parse.
    """

    source: str
    labels: list[str]
    valence: float | None
    predicted: list[str] | None


def task_of(source: str, samples: Sequence[Sample]) -> Task:
    """The kind of a set: by its MER-UniBench name, else by what its references carry."""
    known = KNOWN_TASKS.get(re.sub(r"[^a-z0-9]", "", source.lower()))
    if known is not None:
        return known
    labelled = [s for s in samples if s.labels]
    if labelled:
        return "basic" if all(len(s.labels) == 1 for s in labelled) else "ov"
    return "sentiment" if samples and all(s.valence is not None for s in samples) else "ov"


def wheel_set_scores(samples: Sequence[Sample], wheel: EmotionWheel, level: WheelLevel) -> dict[str, Any]:
    """Emotion-wheel F / precision / recall averaged over the five wheels (and per wheel)."""
    per_wheel: dict[str, dict[str, Any]] = {}
    for name in WHEEL_NAMES:
        values = []
        for sample in samples:
            gold = wheel.clusters(sample.labels, name, level)
            if gold:
                values.append(set_accuracy_recall(gold, wheel.clusters(sample.predicted or [], name, level)))
        if not values:
            per_wheel[name] = {"f1": None, "precision": None, "recall": None, "count": 0}
            continue
        precision = float(np.mean([p for p, _ in values]))
        recall = float(np.mean([r for _, r in values]))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_wheel[name] = {"f1": f1, "precision": precision, "recall": recall, "count": len(values)}
    return {**_mean_over_wheels(per_wheel, ("f1", "precision", "recall")), "per_wheel": per_wheel}


def hit_rate(samples: Sequence[Sample], wheel: EmotionWheel) -> dict[str, Any]:
    """Hit rate at ``level1``, averaged over the five wheels (and per wheel)."""
    per_wheel: dict[str, dict[str, Any]] = {}
    for name in WHEEL_NAMES:
        hits = []
        for sample in samples:
            gold = wheel.clusters(sample.labels, name, "level1")
            if gold:
                hits.append(len(gold & wheel.clusters(sample.predicted or [], name, "level1")))
        per_wheel[name] = {"hit_rate": float(np.mean(hits)) if hits else None, "count": len(hits)}
    return {**_mean_over_wheels(per_wheel, ("hit_rate",)), "per_wheel": per_wheel}


def _mean_over_wheels(per_wheel: dict[str, dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    # A wheel on which no reference reaches a cluster has no score; it is left out and visible in per_wheel.
    scored = [w for w in per_wheel.values() if w["count"]]
    return {key: float(np.mean([w[key] for w in scored])) if scored else None for key in keys}


# What :func:`predict_sentiments` gives where the judge failed to group an answer.
JUDGE_FAILED = "judge_failed"


def binary_sentiment_scores(valences: Sequence[float], predicted: Sequence[str | None]) -> dict[str, Any]:
    """WAF and accuracy of positive vs non-positive, references with valence 0 dropped.

    ``predicted`` holds ``positive`` / ``negative`` / ``neutral``, None (unresolved: always wrong) or
    :data:`JUDGE_FAILED` (left out).
    """
    y_true, y_pred = [], []
    for value, sentiment in zip(valences, predicted, strict=True):
        if value == 0 or sentiment == JUDGE_FAILED:
            continue
        y_true.append(POSITIVE if value > 0 else NOT_POSITIVE)
        y_pred.append(
            metrics.NO_PREDICTION
            if sentiment is None
            else POSITIVE
            if sentiment == "positive"
            else NOT_POSITIVE
        )
    scores = metrics.classification_scores(y_true, y_pred)
    return {
        "waf": scores["waf"] if y_true else None,
        "accuracy": scores["war"] if y_true else None,
        "count": len(y_true),
        "dropped_neutral_reference": sum(value == 0 for value in valences),
        "unresolved": sum(p == metrics.NO_PREDICTION for p in y_pred),
    }


def predict_sentiments(
    predictions: Sequence[list[str] | None], grouping: SentimentGrouping, judge: Any, taxonomy: Taxonomy
) -> tuple[list[str | None], dict[str, Any]]:
    """Sentiment of each predicted label list and how it was obtained (grouping name, failures)."""
    if grouping == "taxonomy":
        found = [metrics.sentiment_of_labels(p, taxonomy) if p is not None else None for p in predictions]
        sentiments = [None if s in (None, metrics.NO_PREDICTION) else s for s in found]
        return sentiments, {"grouping": f"taxonomy:valence|{taxonomy_ref()}", "failed": 0, "cached": 0}
    if grouping != "llm":
        raise ValueError(f"sentiment grouping must be 'llm' or 'taxonomy', got {grouping!r}")
    chat = require_chat_judge(judge, "MER-UniBench llm sentiment")
    prompt = load_mer_prompt()
    asked = [i for i, p in enumerate(predictions) if p is not None]
    answers = chat.ask_many([sentiment_task(prompt, predictions[i] or []) for i in asked])
    sentiments: list[str | None] = [None] * len(predictions)
    for index, answer in zip(asked, answers, strict=True):
        # A grouping the judge failed to give (after its retries) is the judge's failure, not the
        # model's: left out of the scores and counted in ``failed``, as MER-OV does.
        sentiments[index] = answer.value if answer.error is None else JUDGE_FAILED
    info = {
        "grouping": f"llm:{chat.identity}|{prompt.ref}",
        "failed": sum(a.error is not None for a in answers),
        "cached": sum(a.cached for a in answers),
    }
    return sentiments, info


def score_set(
    samples: Sequence[Sample],
    task: Task,
    wheel: EmotionWheel,
    sentiment_grouping: SentimentGrouping,
    judge: Any,
    taxonomy: Taxonomy,
) -> dict[str, Any]:
    """Figures of one set for its kind, with the headline named."""
    out: dict[str, Any] = {"task": task, "samples": len(samples)}
    if task == "ov":
        out["level1"] = wheel_set_scores(samples, wheel, "level1")
        out["level2"] = wheel_set_scores(samples, wheel, "level2")
        headline = out["level1"]["f1"]
    elif task == "basic":
        out["hit_rate"] = hit_rate(samples, wheel)
        headline = out["hit_rate"]["hit_rate"]
    else:
        rows = [s for s in samples if s.valence is not None]
        sentiments, info = predict_sentiments(
            [s.predicted for s in rows], sentiment_grouping, judge, taxonomy
        )
        out["sentiment"] = {**binary_sentiment_scores([s.valence or 0.0 for s in rows], sentiments), **info}
        out["sentiment"]["without_valence"] = len(samples) - len(rows)
        headline = out["sentiment"]["waf"]
    out["headline"] = {"metric": HEADLINE[task], "value": headline}
    return out


def score_unibench(
    samples: Sequence[Sample],
    wheel: EmotionWheel,
    taxonomy: Taxonomy,
    sentiment_grouping: SentimentGrouping = "taxonomy",
    judge: Any = None,
    task: Task | None = None,
) -> dict[str, Any]:
    """MER-UniBench figures per source set and the mean of their headlines.

    Args:
        samples: Scored pairs (each names its source set).
        wheel: The emotion-wheel tables.
        taxonomy: Used for ``taxonomy`` sentiment grouping.
        sentiment_grouping: ``llm`` (published prompt through ``judge``) or ``taxonomy``.
        judge: Chat judge for ``llm`` sentiment grouping.
        task: Kind of every set; by name or by content when None.

    Raises:
        ValueError: Unknown task, or ``llm`` sentiment grouping without a chat judge.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"MER-UniBench task must be one of {TASKS}, got {task!r}")
    by_source: dict[str, list[Sample]] = {}
    for sample in samples:
        by_source.setdefault(sample.source, []).append(sample)
    sets = {
        name: score_set(rows, task or task_of(name, rows), wheel, sentiment_grouping, judge, taxonomy)
        for name, rows in sorted(by_source.items())
    }
    headlines = [s["headline"]["value"] for s in sets.values() if s["headline"]["value"] is not None]
    return {
        "wheel": wheel.ref,
        "sets": sets,
        "mean_headline": float(np.mean(headlines)) if headlines else None,
    }
