from __future__ import annotations

import pytest

from affect_llm.evaluation.calibration import load_calibration, spearman, spearman_for
from affect_llm.evaluation.judge.protocol import JudgeResult


def test_calibration_set_has_four_variants_per_reference():
    pairs = load_calibration()
    assert len(pairs) >= 20
    assert sorted({p.expected_rank for p in pairs}) == [1, 2, 3, 4]
    assert all(p.prediction == "" for p in pairs if p.expected_rank == 1)


def test_spearman_basic_values():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0


class OracleJudge:
    """Scores by the expected rank hidden in a lookup table (a perfect judge)."""

    identity = "oracle"

    def __init__(self):
        self.ranks = {(p.reference, p.prediction): p.expected_rank for p in load_calibration()}

    def score(self, reference, prediction, kind):
        return JudgeResult(score=float(self.ranks[(reference, prediction)]))


def test_perfect_judge_has_spearman_one():
    assert spearman_for(OracleJudge()) == pytest.approx(1.0)


@pytest.mark.embedded
def test_embedding_judge_ranks_calibration_set():
    from affect_llm.evaluation.judge.embedding import EmbeddingJudge

    assert spearman_for(EmbeddingJudge()) > 0.6
