from __future__ import annotations

import pytest

from affect_llm.evaluation.judge.embedding import emotion_families, family_overlap
from affect_llm.labels.taxonomy import load_taxonomy


def test_emotion_families_skip_negated_words():
    tax = load_taxonomy()
    assert emotion_families("She is angry, not happy.", tax) == {"anger"}


def test_family_overlap_f1():
    tax = load_taxonomy()
    assert family_overlap("angry and sad", "furious", tax) == pytest.approx(2 / 3)
    assert family_overlap("angry", "the weather", tax) == 0.0


@pytest.mark.embedded
def test_embedding_judge_is_deterministic_and_orders_pairs(tmp_path):
    from affect_llm.evaluation.judge.cache import JudgeCache
    from affect_llm.evaluation.judge.embedding import EmbeddingJudge

    judge = EmbeddingJudge(cache=JudgeCache(tmp_path))
    ref = "A loud, sharp voice and a frown: the person is angry."
    close = judge.score(ref, "Raised harsh voice and furrowed brows show anger.", "clue")
    far = judge.score(ref, "A warm smile and cheerful voice: happy.", "clue")
    again = EmbeddingJudge(cache=JudgeCache(tmp_path)).score(
        ref, "A warm smile and cheerful voice: happy.", "clue"
    )
    assert close.score > far.score
    assert again.cached and again.score == far.score
    assert judge.score(ref, "", "label").score == 1.0
