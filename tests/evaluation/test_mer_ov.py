"""MER2024-OV scores (MERTools ``MER2024/main-ov.py``; prompt from AffectGPT ``toolkit/utils/chatgpt.py``).

Checked by hand against MERTools' shipped example (``MER2024/ov_store``: 332 samples with their
GPT groupings): this code gives accuracy 0.5803 / recall 0.4963 where the published run prints
0.5818 / 0.4978; the one differing sample holds the label "don't believe", which the published
list parsing splits at the apostrophe. Those files are data of the MER 2024 set and are not copied.
"""

from __future__ import annotations

import pytest

from affect_llm.evaluation.judge.cache import JudgeCache
from affect_llm.evaluation.judge.mer_tasks import check_groups, group_heads, load_mer_prompt
from affect_llm.evaluation.judge.openai_compat import OpenAICompatJudge
from affect_llm.evaluation.mer_ov import score_mer_ov
from affect_llm.labels.taxonomy import load_taxonomy

# The published prompt's own one-shot answer.
PUBLISHED_GROUPS = "[['Agree', 'agreement', 'Accept', 'acceptance'], ['Relaxed', 'relaxed'],['pleasant', 'positive', 'Happy']]"
PAIRS = [
    (["agreement", "relaxed", "Happy"], ["accept", "pleasant", "angry"]),
    (["happy"], []),
    ([], ["sad"]),
]


def _judge(stub, tmp_path, **kwargs):
    cache = JudgeCache(tmp_path / "cache")
    return OpenAICompatJudge(stub.url, "stub", backoff_s=0.0, cache=cache, **kwargs)


def test_published_example_grouping(openai_stub, tmp_path):
    """Groups heads: agree (agree, agreement, accept, acceptance), relaxed, pleasant (pleasant,
    positive, happy). Sample 1: G = {agree, relaxed, pleasant}, P = {agree, pleasant, angry}:
    accuracy 2/3, recall 2/3. Sample 2 predicts nothing: 0 and 0, no request. Sample 3 has no
    reference label: skipped. Means: accuracy 1/3, recall 1/3, avg 1/3."""
    openai_stub.reset([{"content": PUBLISHED_GROUPS}])
    result = score_mer_ov(PAIRS, "llm", judge=_judge(openai_stub, tmp_path))
    assert result["accuracy"] == pytest.approx(1 / 3) and result["recall"] == pytest.approx(1 / 3)
    assert result["avg"] == pytest.approx(1 / 3)
    assert (result["count"], result["skipped"], result["failed"]) == (2, 1, 0)
    assert result["grouping"].startswith("llm:openai:stub|") and result["grouping"].endswith(
        load_mer_prompt().ref
    )
    (sent,) = openai_stub.requests()
    assert [m["role"] for m in sent["messages"]] == ["user"]  # the published call has no system message
    assert sent["messages"][0]["content"].endswith(
        "Input: ['accept', 'agreement', 'angry', 'happy', 'pleasant', 'relaxed'] Output:"
    )


def test_grouping_is_cached(openai_stub, tmp_path):
    openai_stub.reset([{"content": PUBLISHED_GROUPS}])
    score_mer_ov(PAIRS, "llm", judge=_judge(openai_stub, tmp_path))
    openai_stub.reset([])
    again = score_mer_ov(PAIRS, "llm", judge=_judge(openai_stub, tmp_path))
    assert again["cached"] == 1 and not openai_stub.requests()
    assert again["accuracy"] == pytest.approx(1 / 3)


def test_failed_grouping_is_counted_not_scored(openai_stub, tmp_path):
    openai_stub.reset([{"content": "agree and relaxed go together"}])
    result = score_mer_ov(PAIRS[:1], "llm", judge=_judge(openai_stub, tmp_path, max_retries=0))
    assert result["failed"] == 1 and result["count"] == 0 and result["accuracy"] is None


def test_exact_grouping_hand_computed():
    """G = {happy, sad}, P = {happy, joyful}: accuracy 1/2, recall 1/2."""
    result = score_mer_ov([(["Happy", "sad"], ["happy", "joyful"])], "exact")
    assert (result["accuracy"], result["recall"], result["avg"]) == (0.5, 0.5, 0.5)
    assert result["grouping"] == "exact"


def test_taxonomy_grouping_uses_fine_clusters():
    """happy and joyful share the fine cluster ``joy``: accuracy 1, recall 1."""
    result = score_mer_ov([(["happy"], ["joyful"])], "taxonomy", taxonomy=load_taxonomy())
    assert result["accuracy"] == 1.0 and result["grouping"].startswith("taxonomy:fine|taxonomy.json#")


def test_llm_grouping_needs_a_chat_judge():
    with pytest.raises(ValueError, match="chat judge"):
        score_mer_ov(PAIRS, "llm", judge=None)


def test_group_answers_are_checked():
    assert check_groups('[["a", "B "], ["c"]]') == ([["a", "b"], ["c"]], None)
    assert check_groups("Output: [['x', 'y']]")[0] == [["x", "y"]]
    assert check_groups('["a", "b"]')[1] == "answer must be a list of lists"
    assert check_groups("no list")[1] == "answer has no list"
    # A word in two groups keeps the last one, as the published mapping does.
    assert group_heads([["a", "b"], ["c", "b"]]) == {"a": "a", "b": "c", "c": "c"}
