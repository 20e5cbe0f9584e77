"""Batch explanation when things go wrong across a run: generation failing batch after batch, SIGTERM
from a scheduler, a resumed file of another shard, a mistyped split, decoding options that do not
change answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from genhelpers import read_rows, write_rows

from affect_llm.generation.backend import DecodingSettings
from affect_llm.generation.explain import STOP_AFTER_FAILED_BATCHES, ExplainSettings, explain_manifest

DECODING = DecodingSettings(max_new_tokens=8)
# A GPU error cannot happen on this machine: the child process replaces the HF backend's generate
# with one that answers the first batch and then raises what CUDA raises after an illegal access.
FAILING_GENERATE = """
import sys
from affect_llm.cli.main import main
from affect_llm.generation.hf_backend import HFBackend

real, calls = HFBackend.generate, []

def generate(self, requests, decoding):
    calls.append(len(requests))
    if len(calls) > 1:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return real(self, requests, decoding)

HFBackend.generate = generate
sys.exit(main(sys.argv[1:]))
"""


def _cli(*arguments: str, failing: bool = False) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", FAILING_GENERATE] if failing else [sys.executable, "-m", "affect_llm.cli.main"]
    return subprocess.run([*head, *arguments], capture_output=True, text=True, timeout=600, check=False)


def test_generation_failing_batch_after_batch_stops_the_run_and_is_retried(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    ids = [row["id"] for row in read_rows(small_manifest)]
    assert len(ids) > 1 + STOP_AFTER_FAILED_BATCHES
    arguments = ["explain", str(small_manifest), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--batch-size", "1", "--max-new-tokens", "8", "--decode-workers", "0"]
    stopped = _cli(*arguments, failing=True)
    assert stopped.returncode == 6, stopped.stderr
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("affect-llm explain: error: generation failed: CUDA error: an illegal memory access")
    assert f"{STOP_AFTER_FAILED_BATCHES} batches in a row" in message and "--retry-failed" in message
    rows = read_rows(out)  # the answered batch and the failed ones are kept; nothing after them
    assert [row["parse_status"] == "failed" for row in rows] == [False] + [True] * STOP_AFTER_FAILED_BATCHES
    assert not Path(f"{out}.lock").exists()
    # A plain rerun goes on with the rest and says what failed before.
    rerun = _cli(*arguments)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{STOP_AFTER_FAILED_BATCHES} of the clips already done failed in generation in an earlier run" in rerun.stdout
    assert sorted(row["id"] for row in read_rows(out)) == sorted(ids)
    retried = _cli(*arguments, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    rows = read_rows(out)
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert not any(row["parse_status"] == "failed" for row in rows)


def test_sigterm_releases_the_lock_and_keeps_the_rows(synth_rows, tiny_checkpoint, tmp_path):
    """A scheduler's time limit or scancel sends SIGTERM: the run unwinds as from Ctrl-C."""
    manifest = write_rows(synth_rows, tmp_path / "all.jsonl")
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "affect_llm.cli.main", "explain", str(manifest), "--model", str(tiny_checkpoint),
         "--out", str(out), "--batch-size", "1", "--max-new-tokens", "48"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_file() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be terminated"
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("affect-llm explain: error: terminated (SIGTERM)")
    assert not Path(f"{out}.lock").exists()
    assert Path(f"{out}.summary.json").is_file()
    written = read_rows(out)  # no torn line
    assert 2 <= len(written) < len(synth_rows)


def test_resume_with_another_shard_count_is_refused(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "part.jsonl"
    explain_manifest(small_manifest, out, tiny_checkpoint, ExplainSettings(batch_size=4, shard=(0, 2)), DECODING)
    before = out.read_bytes()
    assert before
    with pytest.raises(ValueError, match=r"part\.jsonl: \d+ of its \d+ rows .* are not in shard 0/3"):
        explain_manifest(small_manifest, out, tiny_checkpoint, ExplainSettings(batch_size=4, shard=(0, 3)), DECODING)
    assert out.read_bytes() == before


def test_options_that_leave_greedy_answers_alone_do_not_block_a_resume(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    first = explain_manifest(small_manifest, out, tiny_checkpoint, ExplainSettings(batch_size=4), DECODING)
    same_answers = DecodingSettings(max_new_tokens=8, compile=True, seed=7, temperature=0.2, top_p=0.5)
    again = explain_manifest(small_manifest, out, tiny_checkpoint, ExplainSettings(batch_size=4), same_answers)
    assert again["written"] == 0 and again["skipped"] == first["written"]
    sampled = DecodingSettings(max_new_tokens=8, do_sample=True)
    with pytest.raises(ValueError, match=r"written with decoding=\{'do_sample': False\}, this run has \{'do_sample': True\}"):
        explain_manifest(small_manifest, out, tiny_checkpoint, ExplainSettings(batch_size=4), sampled)


def test_a_split_no_row_has_is_a_usage_error(small_manifest, tiny_checkpoint, tmp_path):
    splits = sorted({row.get("split") for row in read_rows(small_manifest)} - {None})
    explain = _cli("explain", str(small_manifest), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o.jsonl"),
                   "--split", "tset")
    assert explain.returncode == 2, explain.stderr
    assert explain.stderr.strip().splitlines()[-1] == (
        f"affect-llm explain: error: --split tset: no row of {small_manifest} has it; its splits: {', '.join(splits)}")
    assert not (tmp_path / "o.jsonl").exists()
    write_rows([], tmp_path / "part.jsonl")
    merge = _cli("explain-merge", str(small_manifest), str(tmp_path / "part.jsonl"), "--split", "tset", "--check")
    assert merge.returncode == 2 and "--split tset: no row of" in merge.stderr


def test_vllm_engine_options_that_change_answers_are_part_of_the_precision() -> None:
    from affect_llm.generation.explain import _run_precision, same_provenance

    checkpoint = {"dtype": "float32", "quantization": "none"}
    assert _run_precision(checkpoint, {}) == checkpoint  # rows of runs without such options are unchanged
    assert _run_precision(checkpoint, {"gpu_memory_utilization": 0.9}) == checkpoint
    fp8 = _run_precision(checkpoint, {"dtype": "bfloat16", "quantization": "fp8", "max_model_len": 4096})
    assert fp8 == {**checkpoint, "engine": {"dtype": "bfloat16", "quantization": "fp8"}}
    assert not same_provenance("precision", checkpoint, fp8)  # a resumed run in fp8 does not append
