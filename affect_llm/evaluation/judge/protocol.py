"""The judge interface: score how plausibly a prediction matches a reference (EMER clue/label overlap).

A judge is any object with an ``identity`` string and ``score(reference, prediction, kind)``.
Results keep the raw judge text and the parse or transport error, so a failed judgement is
reported as failed (score None) instead of a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

JudgeKind = Literal["clue", "label"]
JUDGE_KINDS: tuple[JudgeKind, ...] = ("clue", "label")
Preference = Literal["first", "second", "tie"]


class JudgeError(RuntimeError):
    """A judge backend failed in a way retrying cannot fix (bad URL, 4xx, missing model)."""


@dataclass(frozen=True)
class JudgeResult:
    """One judgement.

    Attributes:
        score: 1-10, or None when the judge failed.
        raw: The judge's raw answer text (empty when nothing came back).
        error: Why ``score`` is None, else None.
        cached: Whether the result came from the disk cache.
    """

    score: float | None
    raw: str = ""
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.score is not None and self.error is None


@runtime_checkable
class Judge(Protocol):
    """Scores the overlap of a prediction with a reference on 1-10."""

    @property
    def identity(self) -> str:
        """Everything that determines the judge's answers (backend, model, prompt ref, decoding)."""
        ...

    def score(self, reference: str, prediction: str, kind: JudgeKind) -> JudgeResult:
        """Score ``prediction`` against ``reference`` for ``kind`` (``clue`` or ``label``)."""
        ...


def score_all(judge: Judge, items: Sequence[tuple[str, str, JudgeKind]]) -> list[JudgeResult]:
    """Scores of ``(reference, prediction, kind)`` items in input order.

    Judges with ``score_many`` (chat judges) ask several at once; others are asked one by one.
    """
    score_many = getattr(judge, "score_many", None)
    if score_many is not None:
        return list(score_many(items))
    return [judge.score(reference, prediction, kind) for reference, prediction, kind in items]


@dataclass(frozen=True)
class PairwiseResult:
    """Outcome of :func:`compare_pair`: which prediction is closer, asked in both orders.

    Attributes:
        preferred: ``first``, ``second`` or ``tie``; None when a judgement failed.
        consistent: Whether both orders agreed (a disagreement is reported as a tie).
        raw: Raw judge answers of the two orders.
    """

    preferred: Preference | None
    consistent: bool
    raw: tuple[str, str]


def compare_pair(judge: Judge, reference: str, first: str, second: str, kind: JudgeKind) -> PairwiseResult:
    """Compare two predictions against one reference, asking with both orders to cancel position bias.

    Judges with a ``prefer(reference, first, second, kind) -> (Preference | None, raw)`` method
    (chat judges) are asked directly; others are compared by their scores.
    """
    prefer = getattr(judge, "prefer", None)
    if prefer is not None:
        forward, raw_forward = prefer(reference, first, second, kind)
        backward, raw_backward = prefer(reference, second, first, kind)
        raw = (raw_forward, raw_backward)
        if forward is None or backward is None:
            return PairwiseResult(None, False, raw)
        swapped = {"first": "second", "second": "first", "tie": "tie"}[backward]
        if forward == swapped:
            return PairwiseResult(forward, True, raw)
        return PairwiseResult("tie", False, raw)
    a, b = judge.score(reference, first, kind), judge.score(reference, second, kind)
    raw = (a.raw, b.raw)
    if a.score is None or b.score is None:
        return PairwiseResult(None, False, raw)
    preferred: Preference = "first" if a.score > b.score else "second" if b.score > a.score else "tie"
    return PairwiseResult(preferred, True, raw)
