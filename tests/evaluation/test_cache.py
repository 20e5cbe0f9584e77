from __future__ import annotations

from affect_llm.evaluation.judge.cache import JudgeCache, cache_key
from affect_llm.evaluation.judge.protocol import JudgeResult


def test_key_depends_on_every_part():
    base = dict(judge_id="j", prompt_ref="p", reference="r", prediction="x", kind="clue", decoding={"t": 0})
    keys = {cache_key(**base)}
    for field, value in [
        ("judge_id", "j2"),
        ("prompt_ref", "p2"),
        ("reference", "r2"),
        ("prediction", "y"),
        ("kind", "label"),
        ("decoding", {"t": 1}),
    ]:
        keys.add(cache_key(**{**base, field: value}))
    assert len(keys) == 7


def test_roundtrip_skips_torn_line_and_failures(tmp_path):
    cache = JudgeCache(tmp_path)
    cache.put("k1", JudgeResult(score=6.0, raw='{"score": 6}'))
    cache.put("k2", JudgeResult(score=None, raw="?", error="bad"))
    with cache.path.open("a") as handle:
        handle.write('{"key": "k3", "sco')
    reloaded = JudgeCache(tmp_path)
    assert reloaded.get("k1") == JudgeResult(score=6.0, raw='{"score": 6}', cached=True)
    assert reloaded.get("k2") is None and reloaded.get("k3") is None
    assert reloaded.skipped_lines == 1
