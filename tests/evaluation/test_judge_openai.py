from __future__ import annotations

from affect_llm.evaluation.judge.cache import JudgeCache
from affect_llm.evaluation.judge.openai_compat import OpenAICompatJudge
from affect_llm.evaluation.judge.protocol import Judge, compare_pair

REF, PRED = "A loud voice and a frown: angry.", "Raised voice, furrowed brows: anger."


def _judge(server, **kwargs):
    return OpenAICompatJudge(
        server.url, "fake-judge", timeout=kwargs.pop("timeout", 5.0), backoff_s=0.0, **kwargs
    )


def test_success_sends_temperature_zero_and_parses_score(fake_openai):
    with fake_openai([(200, 'Sure: {"score": 8}')]) as server:
        judge = _judge(server)
        result = judge.score(REF, PRED, "clue")
    assert isinstance(judge, Judge)
    assert result.ok and result.score == 8.0 and not result.cached
    assert server.requests[0]["temperature"] == 0.0
    assert server.requests[0]["model"] == "fake-judge"


def test_timeout_is_reported_not_scored(fake_openai):
    with fake_openai([("sleep", 1.0)]) as server:
        result = _judge(server, timeout=0.2, max_retries=0).score(REF, PRED, "clue")
    assert result.score is None
    assert "timed out" in result.error


def test_malformed_answers_retry_then_fail_with_raw_kept(fake_openai):
    replies = [(200, "I would say eight."), (200, '{"score": 11}'), ("raw", "not json at all")]
    with fake_openai(replies) as server:
        result = _judge(server, max_retries=2).score(REF, PRED, "label")
    assert result.score is None
    assert "malformed response body" in result.error
    assert len(server.requests) == 3


def test_429_and_500_then_success(fake_openai):
    with fake_openai([(429, ""), (500, ""), (200, '{"score": 6}')]) as server:
        result = _judge(server, max_retries=3).score(REF, PRED, "clue")
    assert result.score == 6.0
    assert len(server.requests) == 3


def test_retries_are_bounded(fake_openai):
    with fake_openai([(503, "")] * 10) as server:
        result = _judge(server, max_retries=2).score(REF, PRED, "clue")
    assert result.score is None and "HTTP 503" in result.error
    assert len(server.requests) == 3


def test_cache_hit_makes_no_request(tmp_path, fake_openai):
    with fake_openai([(200, '{"score": 7}')]) as server:
        first = _judge(server, cache=JudgeCache(tmp_path)).score(REF, PRED, "clue")
        second = _judge(server, cache=JudgeCache(tmp_path)).score(REF, PRED, "clue")
    assert first.score == second.score == 7.0
    assert second.cached and len(server.requests) == 1


def test_empty_prediction_scores_one_without_request(fake_openai):
    with fake_openai([]) as server:
        result = _judge(server).score(REF, "  ", "clue")
    assert result.score == 1.0 and not server.requests


def test_pairwise_asks_both_orders_and_flags_position_bias(fake_openai):
    # The judge always prefers whichever description is shown first: inconsistent -> tie.
    with fake_openai([(200, '{"better": "A"}'), (200, '{"better": "A"}')]) as server:
        biased = compare_pair(_judge(server), REF, PRED, "happy", "clue")
    assert biased.preferred == "tie" and not biased.consistent
    with fake_openai([(200, '{"better": "A"}'), (200, '{"better": "B"}')]) as server:
        fair = compare_pair(_judge(server), REF, PRED, "happy", "clue")
    assert fair.preferred == "first" and fair.consistent
    assert len(server.requests) == 2
