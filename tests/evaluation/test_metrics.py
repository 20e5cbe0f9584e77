from __future__ import annotations

import pytest

from affect_llm.evaluation import metrics
from affect_llm.labels.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


def test_set_scores_hand_computed(tax):
    # gold families {anger}; predicted {anger, ?blorp}: P = 1/2, R = 1, F = 2/3
    s = metrics.set_scores(["angry", "frustrated"], ["annoyed", "blorp"], tax, "family")
    assert (s.precision, s.recall) == (0.5, 1.0)
    assert s.f1 == pytest.approx(2 / 3)


def test_fine_level_is_stricter(tax):
    # annoyed -> irritability, angry -> anger: no fine overlap although the family matches
    assert metrics.set_scores(["angry"], ["annoyed"], tax, "fine").f1 == 0.0
    assert metrics.set_scores(["angry"], ["annoyed"], tax, "family").f1 == 1.0


def test_empty_or_missing_prediction_scores_zero(tax):
    assert metrics.set_scores(["happy"], [], tax) == metrics.SetScores(0.0, 0.0, 0.0)
    assert metrics.set_scores(["happy"], None, tax) == metrics.SetScores(0.0, 0.0, 0.0)
    sample = metrics.score_sample(["happy"], None, tax)
    assert not sample.hit and not sample.correct and sample.num_predicted == 0


def test_unknown_words_counted_and_match_only_themselves(tax):
    sample = metrics.score_sample(["blorp"], ["blorp", "zorg"], tax)
    assert sample.num_unknown == 2
    assert sample.family.precision == 0.5 and sample.family.recall == 1.0


def test_hit_and_accuracy_use_first_reference_label(tax):
    sample = metrics.score_sample(["sad"], ["angry", "sorrowful"], tax)
    assert sample.hit is True  # sadness family is in the predicted set
    assert sample.correct is False  # but the top predicted label is anger


def test_aggregate_means_and_unknown_rate(tax):
    samples = [
        metrics.score_sample(["happy"], ["joyful"], tax),
        metrics.score_sample(["happy"], ["blorp"], tax),
    ]
    agg = metrics.aggregate(samples)
    assert agg["accuracy"] == 0.5 and agg["family_f1"] == 0.5
    assert agg["unknown_word_rate"] == 0.5


def test_classification_scores_hand_computed():
    y_true = ["a", "a", "a", "b"]
    y_pred = ["a", "a", "b", "b"]
    s = metrics.classification_scores(y_true, y_pred)
    # a: P=1 R=2/3 F=0.8 (support 3); b: P=1/2 R=1 F=2/3 (support 1)
    assert s["war"] == 0.75
    assert s["uar"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["waf"] == pytest.approx((0.8 * 3 + 2 / 3) / 4)


def test_confusion_matrix_pools_other_predictions():
    cm = metrics.confusion_matrix(["a", "b", "b"], ["a", "?x", "none"], ["a", "b"])
    assert cm["columns"] == ["a", "b", "other"]
    assert cm["matrix"] == [[1, 0, 0], [0, 0, 2]]


def test_sentiment_from_labels_and_values(tax):
    assert metrics.sentiment_of_labels(["happy", "excited"], tax) == "positive"
    assert metrics.sentiment_of_labels(["sad"], tax) == "negative"
    assert metrics.sentiment_of_labels(["blorp"], tax) == metrics.NO_PREDICTION
    assert metrics.sentiment_of_value(-0.2) == "negative"


def test_bootstrap_is_seeded_and_brackets_mean():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    low, high = metrics.bootstrap_ci(values, seed=3)
    assert (low, high) == metrics.bootstrap_ci(values, seed=3)
    assert low <= sum(values) / len(values) <= high
    assert metrics.bootstrap_ci([]) == (0.0, 0.0)
