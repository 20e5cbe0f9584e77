"""Broken and odd input through the real commands, as a user runs them (console script, real files).

One corpus (:mod:`broken_corpus`, built by a script) holds a kind of bad or odd input per line.
``data check`` and ``explain`` (on a tiny random checkpoint) must give every line the same verdict:
every usable row answered (warnings recorded), every refused one recorded with its reason, exit
codes as the README lists them, and no traceback or native decoder noise on the terminal.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broken_corpus import Case, build_broken_corpus

from affect_llm.loading.build import build_model
from affect_llm.loading.checkpoint import save_checkpoint
from affect_llm.loading.spec import ModelSpec

TINY = ModelSpec(llm="tiny:llm", audio_encoder="tiny:whisper", face_encoder="tiny:fer", audio_window_seconds=4.0,
                 num_audio_tokens=4, num_face_tokens=2)


def affect_llm(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """The console script in a fresh process (its stderr is a pipe, as under a scheduler)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "affect_llm.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False, **kwargs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    return build_broken_corpus(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = build_model(TINY, seed=0)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def checked(corpus: tuple[Path, list[Case]]) -> tuple[subprocess.CompletedProcess, dict]:
    manifest, _ = corpus
    proc = affect_llm("data", "check", manifest.name, "--out", "check", cwd=manifest.parent)
    return proc, json.loads((manifest.parent / "check" / "report.json").read_text())


@pytest.fixture(scope="module")
def explained(corpus: tuple[Path, list[Case]], checkpoint: Path) -> tuple[subprocess.CompletedProcess, dict, dict]:
    manifest, _ = corpus
    proc = affect_llm("explain", manifest.name, "--model", str(checkpoint), "--out", "out.jsonl",
                      "--max-new-tokens", "4", "--batch-size", "4", cwd=manifest.parent)
    rows = {}
    for line in (manifest.parent / "out.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["id"]] = row
    return proc, rows, json.loads((manifest.parent / "out.jsonl.summary.json").read_text())


def _check_verdicts(report: dict) -> dict[int, tuple[str, set[str]]]:
    """Line -> (verdict, codes) as data check found them."""
    codes: dict[int, set[str]] = {}
    for issue in report["issues"]:
        codes.setdefault(issue["line"], set()).add(issue["code"])
    return {line: ("error" if line in report["bad_lines"] else "ok", codes.get(line, set()))
            for line in range(1, report["num_rows"] + 1)}


def _explain_verdicts(cases: list[Case], rows: dict, summary: dict) -> dict[int, tuple[str, set[str]]]:
    """Line -> (verdict, codes) as explain recorded them: a refused line, a refused clip or an answer."""
    refused_lines = {item["line"]: item["code"] for item in summary["refused_lines"]}
    found = {}
    for case in cases:
        if case.line in refused_lines:
            found[case.line] = ("error", {refused_lines[case.line]})
            continue
        row = rows[case.id]
        if row["refused"]:
            found[case.line] = ("error", set())
        else:
            found[case.line] = ("ok", {warning["code"] for warning in row["warnings"]})
    return found


def test_the_corpus_holds_sixteen_kinds_or_more(corpus: tuple[Path, list[Case]]) -> None:
    _, cases = corpus
    assert len({case.kind for case in cases}) >= 16
    assert {"ok", "error"} == {case.verdict for case in cases}


def test_data_check_gives_each_line_its_verdict_and_reason(corpus, checked) -> None:
    _, cases = corpus
    proc, report = checked
    verdicts = _check_verdicts(report)
    for case in cases:
        verdict, codes = verdicts[case.line]
        assert verdict == case.verdict, (case.kind, report["issues"])
        assert case.code is None or case.code in codes, (case.kind, codes)
    assert report["num_good"] == sum(case.verdict == "ok" for case in cases)
    assert proc.returncode == 1  # rows were quarantined


def test_explain_answers_every_usable_row_and_records_every_refused_one(corpus, explained) -> None:
    _, cases = corpus
    proc, rows, summary = explained
    assert proc.returncode == 0, proc.stderr
    for case in cases:
        if case.verdict == "ok":
            assert rows[case.id]["parse_status"] in ("ok", "unparseable") and isinstance(rows[case.id]["raw"], str)
    refused = [row for row in rows.values() if row["refused"]]
    assert all(row["parse_status"] == "failed" and row["raw"] is None and row["error"] for row in refused)
    counts = summary["counts"]
    assert counts["refused_lines"] + counts["written"] == len(cases)
    assert f"{counts['refused']} clips refused, 0 failed in generation, {counts['refused_lines']} manifest lines " \
           "refused" in proc.stdout


def test_data_check_and_explain_agree_on_every_line(corpus, checked, explained) -> None:
    _, cases = corpus
    _, report = checked
    _, rows, summary = explained
    by_check = _check_verdicts(report)
    by_explain = _explain_verdicts(cases, rows, summary)
    assert {line: v for line, (v, _) in by_explain.items()} == {line: v for line, (v, _) in by_check.items()}
    check_reasons = {(i["line"]): i["reason"] for i in report["issues"] if i["severity"] == "error"}
    for case in cases:
        if case.verdict == "error" and case.line not in {i["line"] for i in summary["refused_lines"]}:
            assert check_reasons[case.line] in rows[case.id]["error"], case.kind
        if case.verdict == "ok" and case.code not in (None, "no_split"):
            # The warnings are the same findings, recorded in the result row.
            assert case.code in by_explain[case.line][1], case.kind


def test_no_traceback_and_no_native_noise_on_the_terminal(corpus, checked, explained) -> None:
    manifest, _ = corpus
    for proc in (checked[0], explained[0]):
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "ERROR opening" not in proc.stderr and "moov atom" not in proc.stderr
    # The decoders' complaints are kept, in the run's log.
    assert "ERROR opening" in (manifest.parent / "out.jsonl.log").read_text()
    assert "ERROR opening" in (manifest.parent / "check" / "check.log").read_text()


def test_strict_explain_stops_at_the_first_refused_input(corpus, checkpoint: Path) -> None:
    manifest, _ = corpus
    proc = affect_llm("explain", manifest.name, "--model", str(checkpoint), "--out", "strict.jsonl",
                      "--max-new-tokens", "4", "--strict", cwd=manifest.parent)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("affect-llm explain: error: ") and "--strict stops at the first refused input" in last


def test_strict_explain_names_the_first_refused_clip_and_counts_the_refused(checkpoint: Path, tmp_path: Path) -> None:
    """Refused clips in one batch: the error names the first in the manifest, the summary counts
    every refused clip (none of them is written) and the batch's good answer is kept."""
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "good.wav", 0.3 * np.sin(np.arange(16_000) / 10.0), 16_000)
    (tmp_path / "empty.wav").write_bytes(b"")
    rows = [{"id": "good", "audio": "good.wav", "split": "test"},
            {"id": "missing", "audio": "nosuch.wav", "split": "test"},
            {"id": "empty", "audio": "empty.wav", "split": "test"}]
    # Sorted for batching, "empty" comes before "missing"; the manifest says otherwise.
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    proc = affect_llm("explain", "m.jsonl", "--model", str(checkpoint), "--out", "out.jsonl",
                      "--max-new-tokens", "4", "--strict", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "clip missing: " in proc.stderr.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["counts"]["refused"] == 2
    assert {clip["id"] for clip in summary["refused_clips"]} == {"missing", "empty"}
    written = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == ["good"] and summary["counts"]["written"] == 1


def test_retry_failed_explains_a_restored_clip_and_keeps_the_others(checkpoint: Path, tmp_path: Path) -> None:
    """A clip refused for a missing file stays refused on a plain rerun; restored, --retry-failed answers it."""
    import numpy as np
    import soundfile

    tone = 0.3 * np.sin(np.arange(16_000) / 10.0)
    soundfile.write(tmp_path / "good.wav", tone, 16_000)
    rows = [{"id": "good", "audio": "good.wav", "split": "test"},
            {"id": "late", "audio": "late.wav", "split": "test"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = ["explain", "m.jsonl", "--model", str(checkpoint), "--out", "out.jsonl", "--max-new-tokens", "4"]

    def written() -> dict[str, dict]:
        return {row["id"]: row for row in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}

    assert affect_llm(*command, cwd=tmp_path).returncode == 0
    first = written()
    assert first["late"]["parse_status"] == "failed" and first["good"]["parse_status"] != "failed"
    soundfile.write(tmp_path / "late.wav", tone, 16_000)
    rerun = affect_llm(*command, cwd=tmp_path)
    assert rerun.returncode == 0
    assert written() == first  # a plain rerun skips every id written, the failed one too
    # ... and its summary still names the refusal the first run wrote.
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["counts"]["skipped"] == 2 and summary["counts"]["refused_earlier"] == 1
    assert summary["refused_earlier"] == [{"id": "late", "error": first["late"]["error"]}]
    assert "1 of the clips already done were refused by an earlier run" in rerun.stdout
    proc = affect_llm(*command, "--retry-failed", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    retried = written()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 2 and retried["good"] == first["good"]  # the good row kept, not redone
    assert retried["late"]["parse_status"] != "failed" and not retried["late"]["refused"]  # tiny model: unparseable


def test_a_second_writer_is_refused_naming_the_holder(corpus, checkpoint: Path) -> None:
    manifest, _ = corpus
    out = manifest.parent / "held.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom affect_llm.fileio import OutputLock\n"
         f"with OutputLock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        proc = affect_llm("explain", manifest.name, "--model", str(checkpoint), "--out", out.name,
                          cwd=manifest.parent)
        assert proc.returncode == 4
        line = proc.stderr.strip().splitlines()[-1]
        assert f"process {holder.pid} on host {socket.gethostname()}" in line and "held.jsonl.lock" in line
        assert not out.exists()  # refused before writing anything (and before loading the model)
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
