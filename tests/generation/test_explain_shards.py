"""Cluster batch explanation: shards killed and requeued, merged, equal to one unsharded run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from genhelpers import read_rows, write_rows

from affect_llm.generation.explain import ExplainSettings, in_shard, parse_shard, pending_count

SHARDS = 3
# Batch size 1 everywhere: every clip is generated alone, so a sharded run computes what the
# unsharded one computes, whatever clips share a shard.
EXPLAIN_FLAGS = ["--batch-size", "1", "--max-new-tokens", "24"]


def _explain_command(manifest: Path, checkpoint: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "affect_llm.cli.main", "explain", str(manifest), "--model", str(checkpoint),
            "--out", str(out), *EXPLAIN_FLAGS, *flags]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def _kill_after(command: list[str], out: Path, lines: int) -> None:
    """Start ``command`` in its own process group and SIGKILL the group once ``out`` has ``lines`` rows."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if out.is_file() and out.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the shard ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the decode workers too, as a node failure would
    finally:
        process.wait(timeout=30)


def _essentials(path: Path) -> dict[str, tuple]:
    return {r["id"]: (r["labels"], r["raw"], r["parse_status"]) for r in read_rows(path)}


def test_three_shards_one_killed_and_requeued_merge_to_the_unsharded_run(synth_rows, tiny_checkpoint, tmp_path):
    manifest = write_rows(synth_rows, tmp_path / "all.jsonl")
    ids = [r["id"] for r in synth_rows]
    sizes = [sum(in_shard(i, (k, SHARDS)) for i in ids) for k in range(SHARDS)]
    victim = sizes.index(max(sizes))
    parts = [tmp_path / f"shard-{k}-of-{SHARDS}.jsonl" for k in range(SHARDS)]

    _kill_after(_explain_command(manifest, tiny_checkpoint, parts[victim], "--shard", f"{victim}/{SHARDS}"),
                parts[victim], lines=2)
    assert 2 <= parts[victim].read_bytes().count(b"\n") < sizes[victim]
    # Before the requeue the merge finds the killed shard's ids missing, and says so in its exit code.
    early = _run([sys.executable, "-m", "affect_llm.cli.main", "explain-merge", str(manifest), str(parts[victim]),
                  "--check"])
    assert early.returncode == 1, early.stderr
    assert "missing" in early.stdout
    for k in range(SHARDS):  # the other array tasks, then the requeued one (the same command)
        done = _run(_explain_command(manifest, tiny_checkpoint, parts[k], "--shard", f"{k}/{SHARDS}"))
        assert done.returncode == 0, done.stderr

    merged = tmp_path / "merged.jsonl"
    merge = _run([sys.executable, "-m", "affect_llm.cli.main", "explain-merge", str(manifest), *map(str, parts),
                  "--out", str(merged)])
    assert merge.returncode == 0, merge.stdout + merge.stderr
    assert Counter(r["id"] for r in read_rows(merged)) == Counter(ids)  # every id once
    assert [r["id"] for r in read_rows(merged)] == ids  # in manifest order

    single = tmp_path / "single.jsonl"
    assert _run(_explain_command(manifest, tiny_checkpoint, single)).returncode == 0
    assert _essentials(merged) == _essentials(single)


def test_progress_total_counts_this_shards_pending_rows(synth_rows, tmp_path):
    manifest = write_rows(synth_rows, tmp_path / "all.jsonl")
    shard = parse_shard("1/3")
    mine = [r["id"] for r in synth_rows if in_shard(r["id"], shard)]
    out = tmp_path / "out.jsonl"
    settings = ExplainSettings(shard=shard)
    assert pending_count(manifest, out, settings) == len(mine)
    write_rows([{"id": i} for i in mine[:2]], out)  # an interrupted run wrote two rows
    assert pending_count(manifest, out, settings) == len(mine) - 2
    test_ids = [r["id"] for r in synth_rows if r["split"] == "test" and in_shard(r["id"], shard)]
    assert pending_count(manifest, tmp_path / "none.jsonl", ExplainSettings(shard=shard, split="test")) == len(test_ids)


def test_decode_workers_give_the_answers_of_inline_decoding(small_manifest, tiny_checkpoint, tmp_path):
    from affect_llm.generation.backend import DecodingSettings
    from affect_llm.generation.explain import explain_manifest

    answers = []
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}.jsonl"
        settings = ExplainSettings(batch_size=2, decode_workers=workers)
        explain_manifest(small_manifest, out, tiny_checkpoint, settings, DecodingSettings(max_new_tokens=8))
        answers.append(_essentials(out))
    assert answers[0] == answers[1]
    assert len(answers[0]) == len(read_rows(small_manifest))


def test_clips_are_decoded_in_worker_processes(small_manifest, tiny_checkpoint, tmp_path, monkeypatch):
    from affect_llm.features.decode import ClipJob
    from affect_llm.generation.backend import DecodingSettings
    from affect_llm.generation.explain import explain_manifest

    pids = tmp_path / "pids.txt"
    decode = ClipJob.__call__

    def recording(self, row):
        with pids.open("a") as handle:  # the forked workers inherit this patch
            handle.write(f"{os.getpid()}\n")
        return decode(self, row)

    monkeypatch.setattr(ClipJob, "__call__", recording)
    settings = ExplainSettings(batch_size=2, decode_workers=1)
    explain_manifest(small_manifest, tmp_path / "o.jsonl", tiny_checkpoint, settings, DecodingSettings(max_new_tokens=4))
    decoders = set(pids.read_text().split())
    assert len(pids.read_text().split()) == len(read_rows(small_manifest))
    assert str(os.getpid()) not in decoders


def test_merge_row_of_another_model_is_a_one_line_usage_error(small_manifest, tmp_path):
    ids = [r["id"] for r in read_rows(small_manifest)]
    base = {"prompt": "tasks@1", "backend": "hf", "decoding": {"max_new_tokens": 8}, "task": "reason",
            "parse_status": "ok"}
    write_rows([{**base, "id": ids[0], "model_fingerprint": "aaa"}], tmp_path / "a.jsonl")
    write_rows([{**base, "id": ids[1], "model_fingerprint": "bbb"}], tmp_path / "b.jsonl")
    result = _run([sys.executable, "-m", "affect_llm.cli.main", "explain-merge", str(small_manifest),
                   str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--check"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"affect-llm explain-merge: error: {tmp_path / 'b.jsonl'}: line 1: field 'model_fingerprint'")


def test_merge_lists_missing_duplicated_and_failed_ids(small_manifest, tmp_path):
    from affect_llm.generation.explain_merge import merge_results

    ids = [r["id"] for r in read_rows(small_manifest)]
    rows = [{"id": i, "parse_status": "ok"} for i in ids[:4]]
    rows[1] = {**rows[1], "parse_status": "failed", "error": "cannot decode x.mp4"}
    write_rows(rows[:3], tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text(json.dumps(rows[2]) + "\n" + json.dumps(rows[3]) + "\n" + '{"id": "tor')
    report = merge_results(small_manifest, [tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "m.jsonl")
    assert report.missing == ids[4:]
    assert report.duplicated == {ids[2]: 2}
    assert report.failed == {ids[1]: "cannot decode x.mp4"}
    assert report.torn == [f"{tmp_path / 'b.jsonl'}: line 3"]
    assert not report.complete
    assert [r["id"] for r in read_rows(tmp_path / "m.jsonl")] == ids[:4]


def test_merge_advice_fits_what_is_wrong(small_manifest, tmp_path):
    """Every id there but one twice: the command says the parts overlap, not that shards are missing."""
    ids = [r["id"] for r in read_rows(small_manifest)]
    rows = [{"id": i, "parse_status": "ok"} for i in ids]
    write_rows(rows, tmp_path / "a.jsonl")
    write_rows(rows[:1], tmp_path / "b.jsonl")
    result = _run([sys.executable, "-m", "affect_llm.cli.main", "explain-merge", str(small_manifest),
                   str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--check"])
    assert result.returncode == 1
    assert "parts overlap" in result.stdout and "ids are missing" not in result.stdout


def test_merge_names_the_file_and_line_of_a_malformed_row(small_manifest, tmp_path):
    import pytest

    from affect_llm.generation.explain_merge import merge_results

    part = tmp_path / "a.jsonl"
    part.write_text('{"id": "x"}\nnot json\n{"id": "y"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl: line 2: not a JSON row"):
        merge_results(small_manifest, [part])


def test_engine_arguments_need_the_vllm_backend(small_manifest, tiny_checkpoint, tmp_path):
    result = _run([sys.executable, "-m", "affect_llm.cli.main", "explain", str(small_manifest), "--model",
                   str(tiny_checkpoint), "--out", str(tmp_path / "o.jsonl"), "--engine-arg", "max_model_len=4096"])
    assert result.returncode == 2
    assert "--engine-arg and --vllm-python need --backend vllm" in result.stderr


def test_engine_arguments_are_read_as_json_values():
    import argparse

    from affect_llm.cli.options import add_engine_arguments, engine_options_from_arguments

    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="vllm")
    add_engine_arguments(parser)
    args = parser.parse_args(["--engine-arg", "gpu_memory_utilization=0.9", "--engine-arg", "enforce-eager=true",
                              "--engine-arg", "dtype=bfloat16", "--engine-arg", "tensor_parallel_size=2"])
    assert engine_options_from_arguments(args) == {"gpu_memory_utilization": 0.9, "enforce_eager": True,
                                                   "dtype": "bfloat16", "tensor_parallel_size": 2}


def test_merge_takes_rows_of_older_versions_and_options_that_leave_answers_alone(small_manifest, tmp_path):
    """Rows without ``precision`` (written before it was recorded) merge with rows that have it, as
    ``explain`` resumes over them; ``--compile``, ``--draft-tokens`` (recorded since they were added) and
    greedy-unused sampling options do not split a run;
    failed rows get the advice to retry them."""
    ids = [r["id"] for r in read_rows(small_manifest)]
    base = {"prompt": "tasks@1", "backend": "hf", "task": "reason", "model_fingerprint": "aaa", "parse_status": "ok"}
    greedy = {"max_new_tokens": 8, "do_sample": False, "temperature": 0.7, "seed": 0, "compile": False}
    old = [{**base, "id": i, "decoding": greedy} for i in ids[:2]]
    new = [{**base, "id": i, "decoding": {**greedy, "compile": True, "seed": 3, "draft_tokens": 8},
            "precision": {"dtype": "float32", "quantization": "none"}} for i in ids[2:]]
    new[0] = {**new[0], "parse_status": "failed", "error": "generation failed: CUDA error"}
    write_rows(old, tmp_path / "a.jsonl")
    write_rows(new, tmp_path / "b.jsonl")
    result = _run([sys.executable, "-m", "affect_llm.cli.main", "explain-merge", str(small_manifest),
                   str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--check"])
    assert result.returncode == 0, result.stderr
    assert "1 failed" in result.stdout and "--retry-failed" in result.stdout
    bf16 = [{**row, "precision": {"dtype": "bfloat16", "quantization": "none"}} for row in new[:1]]
    write_rows(bf16, tmp_path / "c.jsonl")
    mixed = _run([sys.executable, "-m", "affect_llm.cli.main", "explain-merge", str(small_manifest),
                  str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), str(tmp_path / "c.jsonl"), "--check"])
    assert mixed.returncode == 2
    assert f"{tmp_path / 'c.jsonl'}: line 1: field 'precision' is {{'dtype': 'bfloat16'}}" in mixed.stderr
