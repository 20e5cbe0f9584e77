"""The OpenAI-compatible judge against the stub server process (tests/openai_stub.py)."""

from __future__ import annotations

import pytest

from affect_llm.evaluation.judge.cache import JudgeCache
from affect_llm.evaluation.judge.openai_compat import OpenAICompatJudge
from affect_llm.evaluation.judge.protocol import Judge, JudgeError, compare_pair

REF, PRED = "A loud voice and a frown: angry.", "Raised voice, furrowed brows: anger."


def _judge(stub, **kwargs):
    return OpenAICompatJudge(
        stub.url, "stub-judge", timeout=kwargs.pop("timeout", 5.0), backoff_s=0.0, **kwargs
    )


def test_success_sends_temperature_zero_schema_and_parses_score(openai_stub):
    openai_stub.reset([{"content": 'Sure: {"score": 8}'}])
    judge = _judge(openai_stub)
    result = judge.score(REF, PRED, "clue")
    sent = openai_stub.requests()[0]
    assert isinstance(judge, Judge)
    assert result.ok and result.score == 8.0 and not result.cached
    assert sent["temperature"] == 0.0 and sent["model"] == "stub-judge"
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["score"]["maximum"] == 10


def test_guided_json_and_off_change_what_is_sent_and_the_cache_key(openai_stub):
    guided = _judge(openai_stub, structured_output="guided_json")
    guided.score(REF, PRED, "clue")
    off = _judge(openai_stub, structured_output="off")
    off.score(REF, PRED, "clue")
    first, second = openai_stub.requests()
    assert first["guided_json"]["required"] == ["score"] and "response_format" not in first
    assert "guided_json" not in second and "response_format" not in second
    # Without a constraint the key is the one earlier versions wrote: old caches still hit.
    assert off.decoding == {"temperature": 0.0, "max_tokens": 32}
    assert guided.decoding["structured_output"] == "guided_json"


def test_timeout_is_reported_not_scored(openai_stub):
    openai_stub.reset([{"sleep": 1.0}])
    result = _judge(openai_stub, timeout=0.2, max_retries=0).score(REF, PRED, "clue")
    assert result.score is None
    assert "timed out" in result.error


def test_malformed_answers_retry_then_fail_with_raw_kept(openai_stub):
    replies = [{"content": "I would say eight."}, {"content": '{"score": 11}'}, {"body": "not json at all"}]
    openai_stub.reset(replies)
    result = _judge(openai_stub, max_retries=2).score(REF, PRED, "label")
    assert result.score is None
    assert "malformed response body" in result.error
    assert len(openai_stub.requests()) == 3


def test_429_and_500_then_success(openai_stub):
    openai_stub.reset([{"status": 429}, {"status": 500}, {"content": '{"score": 6}'}])
    result = _judge(openai_stub, max_retries=3).score(REF, PRED, "clue")
    assert result.score == 6.0
    assert len(openai_stub.requests()) == 3


def test_retries_are_bounded(openai_stub):
    openai_stub.reset([{"status": 503}] * 10)
    result = _judge(openai_stub, max_retries=2).score(REF, PRED, "clue")
    assert result.score is None and "HTTP 503" in result.error
    assert len(openai_stub.requests()) == 3


def test_client_error_fails_loudly_with_a_hint(openai_stub):
    openai_stub.reset([{"status": 400}])
    with pytest.raises(JudgeError, match=r"400.*--judge-structured off"):
        _judge(openai_stub).score(REF, PRED, "clue")


def test_cache_hit_makes_no_request(tmp_path, openai_stub):
    openai_stub.reset([{"content": '{"score": 7}'}])
    first = _judge(openai_stub, cache=JudgeCache(tmp_path)).score(REF, PRED, "clue")
    second = _judge(openai_stub, cache=JudgeCache(tmp_path)).score(REF, PRED, "clue")
    assert first.score == second.score == 7.0
    assert second.cached and len(openai_stub.requests()) == 1


def test_empty_prediction_scores_one_without_request(openai_stub):
    result = _judge(openai_stub).score(REF, "  ", "clue")
    assert result.score == 1.0 and not openai_stub.requests()


def test_concurrent_scores_and_cache_match_one_at_a_time(tmp_path, openai_stub):
    openai_stub.reset([], delay=0.05)
    items = [(f"reference {i}", f"prediction {i % 7}", "clue") for i in range(24)]
    items.append(items[3])  # a repeat is asked once and reported as cached
    one = _judge(openai_stub, cache=JudgeCache(tmp_path / "one"), max_in_flight=1)
    sequential = [one.score(*item) for item in items]
    openai_stub.reset([], delay=0.05)
    many = _judge(openai_stub, cache=JudgeCache(tmp_path / "many"), max_in_flight=8)
    concurrent = many.score_many(items)
    assert concurrent == sequential
    assert concurrent[-1].cached and not concurrent[3].cached
    assert 1 < openai_stub.stats()["max_in_flight"] <= 8
    assert len(openai_stub.requests()) == 24
    one_cache = (tmp_path / "one" / "judge_cache.jsonl").read_bytes()
    assert (tmp_path / "many" / "judge_cache.jsonl").read_bytes() == one_cache


def test_pairwise_asks_both_orders_and_flags_position_bias(openai_stub):
    # The judge always prefers whichever description is shown first: inconsistent -> tie.
    openai_stub.reset([{"content": '{"better": "A"}'}, {"content": '{"better": "A"}'}])
    biased = compare_pair(_judge(openai_stub), REF, PRED, "happy", "clue")
    assert biased.preferred == "tie" and not biased.consistent
    openai_stub.reset([{"content": '{"better": "A"}'}, {"content": '{"better": "B"}'}])
    fair = compare_pair(_judge(openai_stub), REF, PRED, "happy", "clue")
    assert fair.preferred == "first" and fair.consistent
    assert len(openai_stub.requests()) == 2


def test_unreachable_server_fails_loudly():
    # Port 9 (discard) has no listener on the loopback interface.
    with pytest.raises(JudgeError, match="cannot connect"):
        OpenAICompatJudge("http://127.0.0.1:9/v1", "m", max_retries=0).score(REF, PRED, "clue")


def test_a_refusal_after_answers_fails_that_item_only(openai_stub):
    """Once the judge has answered, a 400 is about that request (its length, its content): the item is
    recorded as failed, not retried, and the others are scored."""
    openai_stub.reset([{"content": '{"score": 7}'}, {"status": 400}, {"content": '{"score": 5}'}])
    judge = _judge(openai_stub, max_in_flight=1)
    first, refused, third = judge.score_many([(REF, f"{PRED} {i}", "clue") for i in range(3)])
    assert (first.score, third.score) == (7.0, 5.0)
    assert refused.score is None and "HTTP 400" in refused.error and "stub error 400" in refused.error
    assert len(openai_stub.requests()) == 3  # the refused request was not retried
