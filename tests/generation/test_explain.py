"""Batch explanation: row schema, resumption after a kill, bad media, shards, torn lines, determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from genhelpers import read_rows, write_rows

from affect_llm.generation.backend import DecodingSettings
from affect_llm.generation.explain import ExplainSettings, explain_manifest, parse_shard

ROW_FIELDS = {
    "id",
    "labels",
    "explanation",
    "evidence",
    "raw",
    "parse_status",
    "error",
    "model",
    "prompt",
    "backend",
    "timings",
    "model_fingerprint",
}
DECODING = DecodingSettings(max_new_tokens=8)


def _explain(manifest: Path, out: Path, checkpoint: Path, **settings) -> dict[str, int]:
    return explain_manifest(manifest, out, checkpoint, ExplainSettings(**settings), DECODING)


def _ids(manifest: Path) -> list[str]:
    return [row["id"] for row in read_rows(manifest)]


def test_one_row_per_id_with_every_field(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    counts = _explain(small_manifest, out, tiny_checkpoint, batch_size=4)
    rows = read_rows(out)
    assert sorted(r["id"] for r in rows) == sorted(_ids(small_manifest))
    assert counts["written"] == len(rows)
    for row in rows:
        assert set(row) >= ROW_FIELDS, ROW_FIELDS - set(row)
        assert row["backend"] == "hf"
        assert row["model"] == str(tiny_checkpoint)
        assert row["prompt"].startswith("tasks@")
        assert row["parse_status"] in ("ok", "unparseable")
        assert isinstance(row["raw"], str)
        assert set(row["timings"]) >= {"featurize_s", "generate_s"}
    # A second run finds everything done and writes nothing.
    again = _explain(small_manifest, out, tiny_checkpoint, batch_size=4)
    assert again["written"] == 0 and again["skipped"] == len(rows)


def test_limit_then_resume_gives_each_id_once(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    first = _explain(small_manifest, out, tiny_checkpoint, batch_size=2, limit=3)
    assert first["written"] == 3
    _explain(small_manifest, out, tiny_checkpoint, batch_size=2)
    counts = Counter(r["id"] for r in read_rows(out))
    assert set(counts) == set(_ids(small_manifest))
    assert max(counts.values()) == 1


def test_resume_refuses_answers_of_another_decoding(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    _explain(small_manifest, out, tiny_checkpoint, batch_size=4, limit=2)
    before = out.read_text()
    other = DecodingSettings(max_new_tokens=12)
    with pytest.raises(ValueError, match=r"out\.jsonl: line 1 .* written with decoding="):
        explain_manifest(small_manifest, out, tiny_checkpoint, ExplainSettings(batch_size=4), other)
    with pytest.raises(ValueError, match=r"out\.jsonl: line 1 .* written with task='reason', this run has 'perceive'"):
        _explain(small_manifest, out, tiny_checkpoint, batch_size=4, task="perceive")
    assert out.read_text() == before  # nothing appended, nothing lost


def test_resume_refuses_answers_of_another_precision(small_manifest, tiny_checkpoint, tmp_path):
    """Rows record the weights' precision: a bf16 rerun does not append to float32 answers; rows of an
    older version, which recorded none, still resume."""
    from affect_llm.loading.checkpoint import recorded_precision

    out = tmp_path / "out.jsonl"
    _explain(small_manifest, out, tiny_checkpoint, batch_size=4, limit=2)
    assert {row["precision"]["dtype"] for row in read_rows(out)} == {"float32"}
    bf16 = recorded_precision(tiny_checkpoint).overridden(dtype="bfloat16")
    with pytest.raises(ValueError, match=r"line 1 .* written with precision=.*'float32'.*'bfloat16'"):
        explain_manifest(small_manifest, out, tiny_checkpoint, ExplainSettings(batch_size=4), DECODING, precision=bf16)
    write_rows([{key: value for key, value in row.items() if key != "precision"} for row in read_rows(out)], out)
    assert _explain(small_manifest, out, tiny_checkpoint, batch_size=4)["skipped"] == 2


def test_resume_refuses_answers_of_a_retrained_checkpoint(small_manifest, tiny_checkpoint, tmp_path):
    """Retraining writes a new checkpoint at the same path: its answers must not join the old ones."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    out = tmp_path / "out.jsonl"
    _explain(small_manifest, out, checkpoint, batch_size=4, limit=2)
    meta = json.loads((checkpoint / "affect_checkpoint.json").read_text())
    (checkpoint / "affect_checkpoint.json").write_text(json.dumps({**meta, "step": 99}))
    with pytest.raises(ValueError, match="written with model_fingerprint="):
        _explain(small_manifest, out, checkpoint, batch_size=4)
    # The same checkpoint moved elsewhere is the same model: the run resumes.
    moved = tmp_path / "moved"
    shutil.copytree(tiny_checkpoint, moved)
    assert _explain(small_manifest, out.with_name("fresh.jsonl"), tiny_checkpoint, batch_size=4, limit=1)["written"] == 1
    assert _explain(small_manifest, out.with_name("fresh.jsonl"), moved, batch_size=4)["skipped"] == 1


def test_killed_run_resumes_without_duplicates(synth_rows, tiny_checkpoint, tmp_path):
    manifest = write_rows(synth_rows, tmp_path / "all.jsonl")
    out = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        "-m",
        "affect_llm.cli.main",
        "explain",
        str(manifest),
        "--model",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--max-new-tokens",
        "48",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if out.is_file() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    written_before = out.read_bytes().count(b"\n")
    assert 2 <= written_before < len(synth_rows)
    # The resumed run must decode as the killed one did (max 48 tokens), or it refuses the file.
    explain_manifest(manifest, out, tiny_checkpoint, ExplainSettings(batch_size=8), DecodingSettings(max_new_tokens=48))
    counts = Counter(r["id"] for r in read_rows(out))
    assert set(counts) == {r["id"] for r in synth_rows}
    assert max(counts.values()) == 1


def test_bad_media_is_recorded_and_the_run_goes_on(synth_rows, tiny_checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048))
    missing = tmp_path / "missing.wav"
    good = synth_rows[:2]
    bad = [
        {**good[0], "id": "bad-missing", "video": None, "image": None, "audio": str(missing)},
        {**good[0], "id": "bad-corrupt", "video": str(corrupt), "image": None, "audio": None},
    ]
    manifest = write_rows([good[0], *bad, good[1]], tmp_path / "mixed.jsonl")
    out = tmp_path / "out.jsonl"
    counts = _explain(manifest, out, tiny_checkpoint, batch_size=4)
    rows = {r["id"]: r for r in read_rows(out)}
    assert set(rows) == {"bad-missing", "bad-corrupt", good[0]["id"], good[1]["id"]}
    assert counts["failed"] == 2
    assert rows["bad-missing"]["parse_status"] == "failed" and "missing.wav" in rows["bad-missing"]["error"]
    assert rows["bad-corrupt"]["parse_status"] == "failed" and "corrupt.mp4" in rows["bad-corrupt"]["error"]
    assert rows["bad-missing"]["raw"] is None and rows["bad-missing"]["labels"] is None
    for row_id in (good[0]["id"], good[1]["id"]):
        assert rows[row_id]["parse_status"] != "failed"
        assert isinstance(rows[row_id]["raw"], str)


def test_shards_partition_the_ids(small_manifest, tiny_checkpoint, tmp_path):
    outs = [tmp_path / f"shard{i}.jsonl" for i in range(2)]
    for index, out in enumerate(outs):
        _explain(small_manifest, out, tiny_checkpoint, batch_size=8, shard=parse_shard(f"{index}/2"))
    shard_ids = [{r["id"] for r in read_rows(out)} for out in outs]
    assert not shard_ids[0] & shard_ids[1]
    assert shard_ids[0] | shard_ids[1] == set(_ids(small_manifest))


@pytest.mark.parametrize("text", ["1/1", "2/2", "-1/2", "a/b", "3"])
def test_bad_shard_text_is_rejected(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_torn_last_line_is_repaired(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    _explain(small_manifest, out, tiny_checkpoint, batch_size=8, limit=2)
    complete = out.read_bytes()
    # A crash in the middle of a write leaves half a JSON line without its newline.
    out.write_bytes(complete + b'{"id": "' + _ids(small_manifest)[-1].encode() + b'", "raw": "tr')
    _explain(small_manifest, out, tiny_checkpoint, batch_size=8)
    text = out.read_text(encoding="utf-8")
    assert text.startswith(complete.decode()) and text.endswith("\n")
    counts = Counter(r["id"] for r in read_rows(out))  # read_rows fails on any torn line
    assert set(counts) == set(_ids(small_manifest)) and max(counts.values()) == 1


def test_greedy_generation_is_deterministic(small_manifest, tiny_checkpoint, tmp_path):
    runs = []
    for name, batch_size in (("a", 4), ("b", 4)):
        out = tmp_path / f"{name}.jsonl"
        _explain(small_manifest, out, tiny_checkpoint, batch_size=batch_size)
        runs.append({r["id"]: r["raw"] for r in read_rows(out)})
    assert runs[0] == runs[1]
    assert all(isinstance(text, str) and text for text in runs[0].values())


def _file_size_limit(limit: int):
    """A ``preexec_fn``: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored), as on a full disk."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_leaves_no_torn_row_and_a_rerun_completes(small_manifest, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    # No decode worker: the file size limit also caps the shared-memory files a worker hands its
    # tensors through, which would fail in the worker instead of at the results file.
    command = [sys.executable, "-m", "affect_llm.cli.main", "explain", str(small_manifest), "--model",
               str(tiny_checkpoint), "--out", str(out), "--batch-size", "2", "--max-new-tokens", "8",
               "--decode-workers", "0"]
    _explain(small_manifest, out, tiny_checkpoint, batch_size=2, limit=2)
    before = out.read_bytes()
    # Room for half a row more: the next batch's write stops part-way.
    full = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                          preexec_fn=_file_size_limit(len(before) + len(before) // 4))
    assert full.returncode == 5, full.stderr
    message = full.stderr.strip().splitlines()[-1]
    assert message.startswith(f"affect-llm explain: error: cannot write {out}: File too large")
    assert "Traceback" not in full.stderr
    assert out.read_bytes() == before  # the torn batch was cut back
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    counts = Counter(r["id"] for r in read_rows(out))  # read_rows fails on any torn line
    assert set(counts) == set(_ids(small_manifest)) and max(counts.values()) == 1
