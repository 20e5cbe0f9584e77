"""Judge calibration: does a judge rank hand-made prediction variants in the expected order?

``eval/calibration.jsonl`` holds, per reference explanation, four predictions with an expected
rank: same emotion and cues (4), same emotion with wrong cues (3), the opposite emotion (2) and an
empty answer (1). A judge worth trusting has a high Spearman correlation with those ranks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_llm.evaluation.judge.protocol import Judge, JudgeKind
from affect_llm.paths import repo_root


def default_calibration_path() -> Path:
    return repo_root() / "eval" / "calibration.jsonl"


@dataclass(frozen=True)
class CalibrationPair:
    """One calibration row."""

    id: str
    reference: str
    prediction: str
    kind: JudgeKind
    expected_rank: int


def load_calibration(path: str | Path | None = None) -> list[CalibrationPair]:
    """Read calibration rows.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A line is not JSON or lacks a field (names file and line).
    """
    file = Path(path) if path is not None else default_calibration_path()
    if not file.is_file():
        raise FileNotFoundError(f"calibration file not found: {file}")
    pairs = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append(
                CalibrationPair(
                    id=str(row["id"]),
                    reference=str(row["reference"]),
                    prediction=str(row["prediction"]),
                    kind=row.get("kind", "clue"),
                    expected_rank=int(row["expected_rank"]),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{file}:{number}: bad calibration row ({exc!r})") from exc
    return pairs


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation; 0.0 when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_for(judge: Judge, path: str | Path | None = None) -> float:
    """Spearman correlation between ``judge`` scores and expected ranks on the calibration set.

    A failed judgement counts as the lowest score (1) so that failures lower the correlation.
    """
    pairs = load_calibration(path)
    scores = []
    for pair in pairs:
        result = judge.score(pair.reference, pair.prediction, pair.kind)
        scores.append(result.score if result.score is not None else 1.0)
    return spearman(scores, [float(p.expected_rank) for p in pairs])
