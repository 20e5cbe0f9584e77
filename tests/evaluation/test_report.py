from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from affect_llm.data.issues import RefusedInputError
from affect_llm.evaluation.judge.protocol import JudgeResult
from affect_llm.evaluation.report import EvaluationError, evaluate, read_jsonl

REPO = Path(__file__).resolve().parents[2]


def _ref(id_, labels, cue, source="synth", explanation="A loud voice and a frown."):
    return {
        "id": id_,
        "video": None,
        "audio": None,
        "image": None,
        "transcript": None,
        "labels": labels,
        "explanation": explanation,
        "valence": None,
        "arousal": None,
        "split": "test",
        "source": source,
        "extra": {"cue": cue},
    }


def _res(id_, labels, status="ok"):
    return {
        "id": id_,
        "labels": labels,
        "explanation": "Sharp voice." if labels else None,
        "evidence": None,
        "raw": "{}",
        "parse_status": status,
        "error": None if status == "ok" else "no JSON object in text",
        "model": "tiny",
        "prompt": "tasks@v1#0123456789ab",
        "timings": {"generate_s": 0.1},
    }


@pytest.fixture
def files(tmp_path):
    refs = [
        _ref("a", ["happy"], "all"),
        _ref("b", ["angry", "frustrated"], "audio"),
        _ref("c", ["sad"], "face", source="other"),
        _ref("d", ["fearful"], "text"),
    ]
    results = [
        _res("a", ["joyful", "excited"]),
        _res("b", ["annoyed", "blorp"]),
        _res("c", None, "unparseable"),
        _res("z", ["sad"]),
    ]
    refs_path, results_path = tmp_path / "refs.jsonl", tmp_path / "results.jsonl"
    refs_path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    results_path.write_text("".join(json.dumps(r) + "\n" for r in results))
    return results_path, refs_path


def test_report_values_and_coverage(files, tmp_path):
    report = evaluate(*files, tmp_path / "out")
    assert report["coverage"]["scored"] == 3
    assert report["coverage"]["missing_ids"] == ["d"]
    assert report["coverage"]["extra"] == 1
    assert report["parse"]["failure_rate"] == pytest.approx(1 / 3, abs=1e-6)
    # Every reference is scored: "d", without a result row, counts as not answered.
    assert report["overall"]["count"] == 4
    assert report["overall"]["family_f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4, abs=1e-6)
    assert report["by_cue"]["audio"]["count"] == 1
    assert set(report["by_source"]) == {"synth", "other"}
    assert report["prompts"] == ["tasks@v1#0123456789ab"]
    for name in ("report.json", "report.md", "confusion_matrix.png", "per_class.png"):
        assert (tmp_path / "out" / name).is_file()


class ConstantJudge:
    identity = "constant:7"

    def score(self, reference, prediction, kind):
        return JudgeResult(score=7.0 if prediction else 1.0, raw="7")


def test_judge_section_and_histogram(files, tmp_path):
    report = evaluate(*files, tmp_path / "out", judge=ConstantJudge())
    assert report["judge"]["identity"] == "constant:7"
    assert report["judge"]["kinds"]["label"]["scored"] == 3
    assert (tmp_path / "out" / "judge_histogram.png").is_file()


def test_malformed_lines_are_left_out_and_listed(files, tmp_path):
    results, refs = files
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(results.read_bytes() + b'{"id": "x", "labels": ["sa')
    bad_refs = tmp_path / "bad.jsonl"
    bad_refs.write_bytes(refs.read_bytes() + b'{oops\n{"labels": ["sad"]}\n' + refs.read_text().splitlines()[0].encode()
                         + b"\n")
    report = evaluate(torn, bad_refs, tmp_path / "out")
    clean = evaluate(results, refs, tmp_path / "clean")
    assert report["overall"] == clean["overall"]
    lines = len(refs.read_text().splitlines())
    assert report["refused"]["results"] == [{"line": len(results.read_text().splitlines()) + 1,
                                             "reason": "not valid JSON (Unterminated string starting at)"}]
    # The repeated id is named by its line in the file: two refused lines come before it.
    assert [item.get("line") for item in report["refused"]["refs"]] == [lines + 1, lines + 2, lines + 3]
    assert "duplicate reference id" in report["refused"]["refs"][2]["reason"]
    assert f"(line {lines + 3}; the first, line 1, is used)" in report["refused"]["refs"][2]["reason"]


def test_strict_stops_at_the_first_malformed_line(files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "labels": ["sad"]}\n{oops\n')
    with pytest.raises(RefusedInputError, match=r"bad.jsonl:2: not valid JSON"):
        evaluate(files[0], bad, tmp_path / "out", strict=True)
    with pytest.raises(EvaluationError, match=r"bad.jsonl:2"):
        read_jsonl(bad)


def _cli(results, refs, out):
    code = (
        "import argparse, sys\nfrom affect_llm.cli import eval as cmd\n"
        "parser = argparse.ArgumentParser(); cmd.register(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "eval", str(results), "--refs", str(refs), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_cli_twice_gives_byte_identical_report(files, tmp_path):
    first, second = _cli(*files, tmp_path / "one"), _cli(*files, tmp_path / "two")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "report.json" in first.stdout and "family F1" in first.stdout
    assert (tmp_path / "one" / "report.json").read_bytes() == (tmp_path / "two" / "report.json").read_bytes()


def _main(*args):
    return subprocess.run(
        [sys.executable, "-m", "affect_llm.cli.main", "eval", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        check=False,
    )


def test_cli_published_modes_offline_name_their_groupings(files, tmp_path):
    out = tmp_path / "mer"
    run = _main(
        files[0], "--refs", files[1], "--out", out, "--scoring", "mer-ov", "--scoring", "mer-unibench"
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["scoring"]) == ["affect-llm", "mer-ov", "mer-unibench"]
    assert report["scoring"]["mer-ov"]["sections"] == ["mer_ov"]
    # Four: the reference without a result row is scored as an empty prediction, as MERTools scores it.
    assert report["mer_ov"]["grouping"].startswith("taxonomy:fine|") and report["mer_ov"]["count"] == 4
    assert report["mer_unibench"]["sets"]["synth"]["task"] == "ov"
    assert "MER2024-OV [taxonomy:fine|" in run.stdout and "MER-UniBench synth (ov): f1" in run.stdout
    markdown = (out / "report.md").read_text()
    assert "## MER2024-OV (mode `mer-ov`)" in markdown and "## MER-UniBench (mode `mer-unibench`)" in markdown


def test_cli_llm_groupings_through_the_stub_server(tmp_path, openai_stub):
    refs = [
        _ref("o1", ["happy", "relaxed"], "all", source="OV-MERD+"),
        _ref("o2", ["sad"], "all", source="OV-MERD+"),
    ]
    refs += [
        {**_ref(f"m{i}", [], "all", source="CMU-MOSI"), "valence": v} for i, v in enumerate((1.5, -2.0, 0.0))
    ]
    results = [_res("o1", ["happy", "calm"]), _res("o2", None, "unparseable")]
    results += [_res("m0", ["joyful"]), _res("m1", ["sad"]), _res("m2", ["calm"])]
    refs_path, results_path = tmp_path / "refs.jsonl", tmp_path / "results.jsonl"
    refs_path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    results_path.write_text("".join(json.dumps(r) + "\n" for r in results))
    out = tmp_path / "llm"
    judge = ["--judge", "openai", "--judge-url", openai_stub.url, "--judge-model", "stub"]
    modes = [
        "--scoring",
        "mer-ov",
        "--ov-grouping",
        "llm",
        "--scoring",
        "mer-unibench",
        "--sentiment-grouping",
        "llm",
    ]
    run = _main(results_path, "--refs", refs_path, "--out", out, *judge, *modes)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    ov = report["mer_ov"]
    # The stub puts every word in its own group: o1 G = {happy, relaxed}, P = {happy, calm}: 1/2, 1/2;
    # o2 did not parse: 0, 0; the MOSI rows have no labels: skipped.
    assert ov["grouping"].startswith("llm:openai:stub|") and (ov["count"], ov["skipped"], ov["failed"]) == (
        2,
        3,
        0,
    )
    assert ov["accuracy"] == 0.25 and ov["recall"] == 0.25
    mosi = report["mer_unibench"]["sets"]["CMU-MOSI"]
    assert mosi["task"] == "sentiment" and mosi["sentiment"]["grouping"].startswith("llm:openai:stub|")
    assert mosi["sentiment"]["count"] == 2 and mosi["sentiment"]["dropped_neutral_reference"] == 1
    assert report["mer_unibench"]["sets"]["OV-MERD+"]["headline"]["metric"] == "f1"
    asked = [r["messages"][-1]["content"] for r in openai_stub.requests()]
    assert sum("group the emotions" in text for text in asked) == 1  # o1 only: o2 predicted nothing
    assert sum("most likely sentiment" in text for text in asked) == 3
    assert "MER-UniBench mean of headlines" in run.stdout


def test_cli_refuses_llm_grouping_without_chat_judge(files, tmp_path):
    run = _main(
        files[0], "--refs", files[1], "--out", tmp_path / "x", "--scoring", "mer-ov", "--ov-grouping", "llm"
    )
    assert run.returncode == 2
    assert "--ov-grouping llm need --judge openai or --judge hf" in run.stderr


def test_refused_clips_are_not_answered_rather_than_parse_failures(tmp_path):
    """A clip refused for its media has no answer: counted apart from the answers that did not parse,
    and scored as a wrong answer."""
    refs = [_ref("a", ["happy"], "all"), _ref("b", ["sad"], "face"), _ref("c", ["angry"], "audio")]
    results = [_res("a", ["happy"]), _res("b", None, "unparseable"),
               {**_res("c", None, "failed"), "refused": True, "error": "c.wav: field 'audio': file not found"}]
    refs_path, results_path = tmp_path / "refs.jsonl", tmp_path / "results.jsonl"
    refs_path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    results_path.write_text("".join(json.dumps(r) + "\n" for r in results))
    report = evaluate(results_path, refs_path, tmp_path / "out")
    assert report["parse"]["failure_rate"] == pytest.approx(1 / 2, abs=1e-6)
    assert report["parse"]["not_answered"] == 1
    assert report["overall"]["family_f1"] == pytest.approx(1 / 3, abs=1e-6)


def test_sentiment_only_references_are_left_out_of_the_label_scores(tmp_path):
    """A MOSI-style row (valence, no labels) is scored by the sentiment figures only."""
    refs = [_ref("a", ["happy"], "all"), {**_ref("m", [], "all", source="CMU-MOSI"), "valence": 0.8}]
    results = [_res("a", ["joyful"]), _res("m", ["happy"])]
    refs_path, results_path = tmp_path / "refs.jsonl", tmp_path / "results.jsonl"
    refs_path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    results_path.write_text("".join(json.dumps(r) + "\n" for r in results))
    report = evaluate(results_path, refs_path, tmp_path / "out")
    assert report["overall"]["count"] == 1 and report["overall"]["accuracy"] == 1.0
    assert set(report["by_source"]) == {"synth"}
    assert report["sentiment"]["count"] == 2 and report["sentiment"]["war"] == 1.0


def test_only_the_splits_the_results_cover_are_expected(tmp_path):
    """explain --split test scored against the whole manifest: train rows are not missing answers,
    a test row without a result is."""
    refs = [_ref("a", ["happy"], "all"), _ref("b", ["sad"], "all"), {**_ref("t", ["angry"], "all"), "split": "train"}]
    results = [_res("a", ["joyful"])]
    refs_path, results_path = tmp_path / "refs.jsonl", tmp_path / "results.jsonl"
    refs_path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    results_path.write_text("".join(json.dumps(r) + "\n" for r in results))
    report = evaluate(results_path, refs_path, tmp_path / "out")
    assert report["coverage"]["splits"] == ["test"] and report["coverage"]["missing_ids"] == ["b"]
    assert report["overall"]["count"] == 2 and report["overall"]["accuracy"] == 0.5


def test_results_that_answer_none_of_the_references_are_refused_by_name(files, tmp_path):
    """An explain that wrote nothing, or results of another set: exit 2 naming both files, no report."""
    results_path, refs_path = files
    for name, rows in (("empty.jsonl", []), ("other_set.jsonl", [_res("zz", ["sad"])])):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        done = _main(path, "--refs", refs_path, "--out", tmp_path / name.replace(".jsonl", ""))
        assert done.returncode == 2, done.stderr
        assert f"{path}:" in done.stderr and f"an id of {refs_path}" in done.stderr
        assert not (tmp_path / name.replace(".jsonl", "") / "report.json").exists()
