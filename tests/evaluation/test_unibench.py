"""MER-UniBench scores (AffectGPT ``my_affectgpt/evaluation/wheel.py``, ``ew_metric.py``,
``evaluation-scoreonly.py``); cluster traces by hand through ``emotion_wheel.json`` (see
tests/labels/test_emotion_wheel.py for the step-by-step lookups)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from affect_llm.evaluation import metrics
from affect_llm.evaluation.judge.openai_compat import OpenAICompatJudge
from affect_llm.evaluation.unibench import (
    Sample,
    binary_sentiment_scores,
    hit_rate,
    predict_sentiments,
    score_unibench,
    task_of,
    wheel_set_scores,
)
from affect_llm.labels.emotion_wheel import load_emotion_wheel
from affect_llm.labels.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def wheel():
    return load_emotion_wheel()


def _sample(labels, predicted, source="OV-MERD+", valence=None):
    return Sample(source=source, labels=labels, valence=valence, predicted=predicted)


def test_wheel_f_is_taken_of_the_mean_precision_and_recall(wheel):
    """wheel1, level1. Sample 1: angry -> mad, tired -> sad; furious -> mad. G = {mad, sad},
    P = {mad}: precision 1, recall 1/2. Sample 2: G = {happy}, P = {happy, mad}: precision 1/2,
    recall 1. Means 3/4 and 3/4, so F = 3/4 (the mean of per-sample F would be 2/3)."""
    samples = [_sample(["angry", "tired"], ["furious"]), _sample(["happy"], ["happy", "angry"])]
    scores = wheel_set_scores(samples, wheel, "level1")
    w1 = scores["per_wheel"]["wheel1"]
    assert (w1["precision"], w1["recall"], w1["count"]) == (0.75, 0.75, 2)
    assert w1["f1"] == pytest.approx(0.75)
    per_wheel_f = [w["f1"] for w in scores["per_wheel"].values()]
    assert scores["f1"] == pytest.approx(np.mean(per_wheel_f))


def test_unparseable_prediction_scores_zero_and_unmapped_reference_is_skipped(wheel):
    samples = [_sample(["happy"], None), _sample(["neutral"], ["happy"])]
    w1 = wheel_set_scores(samples, wheel, "level1")["per_wheel"]["wheel1"]
    assert (w1["precision"], w1["recall"], w1["f1"], w1["count"]) == (0.0, 0.0, 0.0, 1)


def test_hit_rate_hand_computed(wheel):
    """wheel1: worried -> scared; nervous -> (anxious first on the wheel) -> scared: a hit.
    neutral reaches no cluster: skipped. happy vs angry (mad): a miss. Hit rate 1/2 over 2."""
    samples = [
        _sample(["worried"], ["nervous", "sad"], "MER2023"),
        _sample(["neutral"], ["neutral"], "MER2023"),
        _sample(["happy"], ["angry"], "MER2023"),
    ]
    w1 = hit_rate(samples, wheel)["per_wheel"]["wheel1"]
    assert (w1["hit_rate"], w1["count"]) == (0.5, 2)


def test_binary_sentiment_hand_computed():
    """Valence 0 is dropped. Truth P, N, P, N; predictions P, neutral (not positive), unresolved,
    P. Accuracy 2/4. positive: precision 1/2, recall 1/2, F 1/2; not positive: precision 1,
    recall 1/2, F 2/3. WAF = (2 * 1/2 + 2 * 2/3) / 4 = 7/12."""
    scores = binary_sentiment_scores(
        [1.2, -0.4, 0.0, 2.0, -1.0], ["positive", "neutral", "negative", None, "positive"]
    )
    assert scores["accuracy"] == 0.5 and scores["waf"] == pytest.approx(7 / 12)
    assert (scores["count"], scores["dropped_neutral_reference"], scores["unresolved"]) == (4, 1, 1)


@pytest.mark.parametrize("seed", range(5))
def test_binary_sentiment_agrees_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    valences = rng.choice([-3.0, -1.2, 0.0, 0.4, 2.6], size=60).tolist()
    predicted = rng.choice(["positive", "negative", "neutral"], size=60).tolist()
    scores = binary_sentiment_scores(valences, predicted)
    kept = np.asarray(valences) != 0
    truth = np.asarray(valences)[kept] > 0
    guess = np.asarray(predicted)[kept] == "positive"
    assert scores["waf"] == pytest.approx(f1_score(truth, guess, average="weighted"))
    assert scores["accuracy"] == pytest.approx(accuracy_score(truth, guess))


@pytest.mark.parametrize("seed", range(5))
def test_waf_uar_war_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    classes = ["anger", "joy", "sadness", "fear", "surprise"]
    y_true = rng.choice(classes[:4], size=80).tolist()
    y_pred = rng.choice([*classes, "none"], size=80).tolist()  # includes classes absent from y_true
    scores = metrics.classification_scores(y_true, y_pred)
    true_classes = sorted(set(y_true))
    assert scores["waf"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", labels=true_classes))
    assert scores["waf"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert scores["uar"] == pytest.approx(recall_score(y_true, y_pred, average="macro", labels=true_classes))
    assert scores["war"] == pytest.approx(accuracy_score(y_true, y_pred))


def test_task_by_published_name_else_by_content():
    assert task_of("CMU-MOSI", []) == "sentiment" and task_of("MER2024", []) == "basic"
    assert task_of("OV-MERD+", []) == "ov" and task_of("IEMOCAPFour", []) == "basic"
    assert task_of("mine", [_sample(["happy"], None)]) == "basic"
    assert task_of("mine", [_sample(["happy", "sad"], None)]) == "ov"
    assert task_of("mine", [_sample([], None, valence=0.5)]) == "sentiment"


def test_set_table_names_headlines_and_their_mean(wheel):
    samples = [
        _sample(["worried"], ["nervous"], "MER2023"),
        _sample([], ["happy"], "CMU-MOSI", valence=1.5),
        _sample([], ["sad"], "CMU-MOSI", valence=-2.0),
    ]
    table = score_unibench(samples, wheel, load_taxonomy())
    mosi, mer = table["sets"]["CMU-MOSI"], table["sets"]["MER2023"]
    assert mosi["headline"] == {"metric": "waf", "value": 1.0}
    assert mosi["sentiment"]["grouping"].startswith("taxonomy:valence|taxonomy.json#")
    assert mer["headline"]["metric"] == "hit_rate"
    assert table["mean_headline"] == pytest.approx((1.0 + mer["headline"]["value"]) / 2)
    assert table["wheel"].startswith("emotion_wheel.json#")


def test_llm_sentiment_uses_the_published_prompt(openai_stub):
    openai_stub.reset([{"content": "positive"}, {"content": '"negative"'}])
    judge = OpenAICompatJudge(openai_stub.url, "stub", backoff_s=0.0, max_in_flight=1)
    sentiments, info = predict_sentiments([["joyful"], ["sad", "angry"], None], "llm", judge, load_taxonomy())
    assert sentiments == ["positive", "negative", None]
    first, second = (r["messages"][-1]["content"] for r in openai_stub.requests())
    assert first.endswith("Input: [joyful]; Output: ") and second.endswith("Input: [sad, angry]; Output: ")
    assert info["grouping"].startswith("llm:openai:stub|") and info["failed"] == 0
