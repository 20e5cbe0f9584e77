"""Scoring modes: this project's taxonomy scores and the published MER2024-OV and MER-UniBench ones.

``affect-llm`` (always computed) scores labels through this project's taxonomy; its numbers are
not comparable with published tables. ``mer-ov`` and ``mer-unibench`` reproduce the published
metrics (:mod:`affect_llm.evaluation.mer_ov`, :mod:`affect_llm.evaluation.unibench`) and add
their own report sections; every section records the mode and the grouping behind its numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from affect_llm.evaluation.mer_ov import GROUPINGS, Grouping, score_mer_ov
from affect_llm.evaluation.unibench import TASKS, Sample, SentimentGrouping, Task, score_unibench
from affect_llm.labels.emotion_wheel import load_emotion_wheel
from affect_llm.labels.taxonomy import Taxonomy

Mode = Literal["affect-llm", "mer-ov", "mer-unibench"]
MODES: tuple[Mode, ...] = ("affect-llm", "mer-ov", "mer-unibench")
MODE_TITLES = {
    "affect-llm": "affect-llm taxonomy scores (not comparable with published tables)",
    "mer-ov": "MER2024-OV set accuracy / recall (MER 2024 challenge, open-vocabulary track)",
    "mer-unibench": "MER-UniBench (AffectGPT): emotion-wheel F, hit rate, sentiment WAF / accuracy",
}


# Report sections each mode's numbers are in (the judge's EMER scores use no grouping of ours).
MODE_SECTIONS = {
    "affect-llm": ["overall", "confidence_intervals", "closed_set", "sentiment", "by_source", "by_cue"],
    "mer-ov": ["mer_ov"],
    "mer-unibench": ["mer_unibench"],
}


@dataclass(frozen=True)
class ScoringOptions:
    """What to score beyond this project's own sections.

    Attributes:
        modes: Scoring modes; ``affect-llm`` is always included.
        ov_grouping: Synonym grouping of the MER-OV section (``llm`` is the published one).
        sentiment_grouping: How MER-UniBench maps predicted labels to a sentiment (``llm`` is the
            published one).
        unibench_task: Kind of every set for MER-UniBench; by set name or content when None.
    """

    modes: tuple[Mode, ...] = ("affect-llm",)
    ov_grouping: Grouping = "taxonomy"
    sentiment_grouping: SentimentGrouping = "taxonomy"
    unibench_task: Task | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown scoring mode(s) {unknown}; choose from {MODES}")
        if self.ov_grouping not in GROUPINGS:
            raise ValueError(f"ov_grouping must be one of {GROUPINGS}, got {self.ov_grouping!r}")
        if self.sentiment_grouping not in ("llm", "taxonomy"):
            raise ValueError(
                f"sentiment_grouping must be 'llm' or 'taxonomy', got {self.sentiment_grouping!r}"
            )
        if self.unibench_task is not None and self.unibench_task not in TASKS:
            raise ValueError(f"unibench_task must be one of {TASKS}, got {self.unibench_task!r}")

    @property
    def all_modes(self) -> list[Mode]:
        """Modes in canonical order, ``affect-llm`` first."""
        return [m for m in MODES if m == "affect-llm" or m in self.modes]

    def describe(self) -> dict[str, dict[str, Any]]:
        """Mode -> title and the report sections holding its numbers (written into the report)."""
        return {m: {"title": MODE_TITLES[m], "sections": MODE_SECTIONS[m]} for m in self.all_modes}


def published_sections(
    samples: Sequence[Sample], options: ScoringOptions, taxonomy: Taxonomy, judge: Any, seed: int
) -> dict[str, Any]:
    """Report sections ``mer_ov`` and ``mer_unibench`` for the modes asked for."""
    sections: dict[str, Any] = {}
    if "mer-ov" in options.modes:
        pairs = [(s.labels, s.predicted) for s in samples]
        sections["mer_ov"] = {
            "mode": "mer-ov",
            **score_mer_ov(pairs, options.ov_grouping, judge=judge, taxonomy=taxonomy, seed=seed),
        }
    if "mer-unibench" in options.modes:
        sections["mer_unibench"] = {
            "mode": "mer-unibench",
            **score_unibench(
                samples,
                load_emotion_wheel(),
                taxonomy,
                sentiment_grouping=options.sentiment_grouping,
                judge=judge,
                task=options.unibench_task,
            ),
        }
    return sections
