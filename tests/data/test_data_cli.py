from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from datahelpers import row, write_jsonl

from affect_llm.cli import data as data_cli


def _run(argv: list[str]) -> int:
    # Only this subcommand is registered: the test does not depend on the other CLI modules.
    parser = argparse.ArgumentParser(prog="affect-llm")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_exit_code_follows_bad_rows(tmp_path: Path, media_dir: Path, capsys) -> None:
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [row("a", video=str(media_dir / "av.mp4")), row("b", video="gone.mp4")]
    )
    assert _run(["data", "check", str(manifest), "--out", str(tmp_path / "out")]) == 1
    assert "m.jsonl:2: error: video: file not found" in capsys.readouterr().out
    assert _run(["data", "check", str(manifest), "--out", str(tmp_path / "out"), "--allow-bad"]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["num_bad"] == 1


def test_check_refuses_an_out_that_is_a_file_before_reading_any_row(tmp_path: Path) -> None:
    from affect_llm.cli.errors import UsageError

    manifest = write_jsonl(tmp_path / "m.jsonl", [row("a", video="gone.mp4")])
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    with pytest.raises(UsageError, match=f"--out {taken} is a file"):
        _run(["data", "check", str(manifest), "--out", str(taken)])
    assert taken.read_text() == "mine\n"


def test_prepare_writes_manifest_and_warns_about_missing_media(tmp_path: Path, capsys) -> None:
    (tmp_path / "ann.jsonl").write_text(json.dumps({"k": "x1", "wav": "x1.wav", "emo": "calm"}) + "\n")
    out = tmp_path / "m.jsonl"
    code = _run(
        [
            "data",
            "prepare",
            "generic",
            "--root",
            str(tmp_path),
            "--annotations",
            "ann.jsonl",
            "--map",
            "id=k,audio=wav,labels=emo",
            "--out",
            str(out),
            "--keep-missing",
        ]
    )
    assert code == 0
    assert "1 media referenced by annotations are missing" in capsys.readouterr().err
    assert json.loads(out.read_text())["labels"] == ["calm"]


def test_prepare_records_annotations_that_give_no_row_and_goes_on(tmp_path: Path, capsys) -> None:
    from affect_llm.cli.main import main

    good = {"k": "x1", "wav": "x1.wav", "emo": "calm", "v": "0.5"}
    lines = [json.dumps(good), "{cut short", json.dumps({**good, "k": "x2", "v": "high"}), json.dumps(good),
             json.dumps({"k": "x3", "emo": "sad"})]
    (tmp_path / "ann.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "x1.wav").write_bytes(b"RIFF")
    argv = ["data", "prepare", "generic", "--root", str(tmp_path), "--annotations", "ann.jsonl",
            "--map", "id=k,audio=wav,labels=emo,valence=v", "--out", str(tmp_path / "m.jsonl")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "m.jsonl.summary.json").read_text())
    expected = [("ann.jsonl:2", "invalid JSON"), ("ann.jsonl:3", "column for 'valence' holds 'high', not a number"),
                ("ann.jsonl:5", "column(s) ['wav', 'v'] not found"),
                ("ann.jsonl:4", "duplicate id x1 (the first row with it, ann.jsonl:1, is kept)")]
    assert len(summary["skipped"]) == len(expected)
    for item, (where, reason) in zip(summary["skipped"], expected, strict=True):
        assert item["where"] == where and item["reason"].startswith(reason)
    assert [json.loads(line)["id"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == ["x1"]
    assert "4 annotation entries skipped" in capsys.readouterr().err
    assert main([*argv, "--strict"]) == 3
    assert "ann.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_malformed_csv_lines_are_recorded_and_every_other_line_prepared(tmp_path: Path, capsys) -> None:
    """Spreadsheet exports: an unquoted comma (a cell too many), a line cut short, an empty trailing
    row, a rating that is not a finite number. Each costs its own line, named in the summary."""
    from affect_llm.cli.main import main

    meld = tmp_path / "meld"
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    lines = ["1,Oh, my God!,Monica,surprise,positive,0,0,8,21,a,b", "2,Short row,Joey",
             "3,Fine.,Ross,neutral,neutral,0,1,8,21,0,1", "4,Who?,Ross,neutral,neutral,,,8,21,0,1"]
    meld.mkdir()
    (meld / "dev_sent_emo.csv").write_text("\n".join([header, *lines]) + "\n")
    (meld / "dev_splits_complete").mkdir()
    (meld / "dev_splits_complete" / "dia0_utt1.mp4").write_bytes(b"\0" * 16)
    assert main(["data", "prepare", "meld", "--root", str(meld), "--out", str(tmp_path / "meld.jsonl")]) == 0
    summary = json.loads((tmp_path / "meld.jsonl.summary.json").read_text())
    assert [(s["where"], s["reason"].split(" (")[0]) for s in summary["skipped"]] == [
        ("dev_sent_emo.csv:2", "12 cells where the header has 11 columns"),
        ("dev_sent_emo.csv:3", "3 cells where the header has 11 columns"),
        ("dev_sent_emo.csv:5", "field(s) ['Dialogue_ID', 'Utterance_ID'] empty: the clip cannot be named"),
    ]
    assert [json.loads(line)["id"] for line in (tmp_path / "meld.jsonl").read_text().splitlines()] == [
        "meld/val/dia0_utt1"]

    sheet = tmp_path / "sheet"
    sheet.mkdir()
    (sheet / "a.wav").write_bytes(b"RIFF")
    (sheet / "ann.csv").write_text("clip,file,emo,v\nx,a.wav,happy,0.5\n,,,\ny,a.wav,sad,nan\nz,a.wav,sad,1,EXTRA\n")
    argv = ["data", "prepare", "generic", "--root", str(sheet), "--annotations", "ann.csv",
            "--map", "id=clip,audio=file,labels=emo,valence=v", "--out", str(tmp_path / "sheet.jsonl")]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "sheet.jsonl.summary.json").read_text())
    assert [(s["where"], s["reason"].split(" (")[0]) for s in summary["skipped"]] == [
        ("ann.csv:3", "column for 'id'"), ("ann.csv:4", "column for 'valence' holds 'nan', not a finite number"),
        ("ann.csv:5", "5 cells where the header has 4 columns")]
    assert [json.loads(line)["id"] for line in (tmp_path / "sheet.jsonl").read_text().splitlines()] == ["x"]

    mer = tmp_path / "mer"
    (mer / "video").mkdir(parents=True)
    for name in ("s1", "s2"):
        (mer / "video" / f"{name}.mp4").write_bytes(b"\0" * 16)
    (mer / "train-label.csv").write_text("name,discrete,valence\ns1,happy,2.5\ns2,sad,n/a\n")
    assert main(["data", "prepare", "mer2023", "--root", str(mer), "--out", str(tmp_path / "mer.jsonl")]) == 0
    summary = json.loads((tmp_path / "mer.jsonl.summary.json").read_text())
    assert summary["skipped"] == [{"where": "train-label.csv:3", "reason": "field 'valence' holds 'n/a', not a number"}]
    assert summary["num_rows"] == 1
    capsys.readouterr()


def test_an_output_that_is_a_folder_is_named_before_any_work(tmp_path: Path, capsys) -> None:
    from affect_llm.cli.main import main

    (tmp_path / "ann.csv").write_text("clip,file\nx,a.wav\n")
    assert main(["data", "prepare", "generic", "--root", str(tmp_path), "--annotations", "ann.csv",
                 "--map", "id=clip,audio=file", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--out {tmp_path} is a folder; give the manifest file to write")
    (tmp_path / "m.jsonl").write_text("")
    assert main(["data", "transcribe", str(tmp_path / "m.jsonl"), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err


def test_a_stopped_check_keeps_the_rows_it_checked(tmp_path: Path, monkeypatch, capsys) -> None:
    """SIGTERM during the scan, through the CLI's main: exit 143, the rows checked so far kept, and the
    same command goes on from them. The signal is simulated where it lands (the second row's
    inspection raises Terminated, as the SIGTERM handler makes it do): a real signal's timing against
    a scan of a few seconds is not reliable on loaded cores."""
    from affect_llm.cli.errors import Terminated
    from affect_llm.cli.main import main
    from affect_llm.data import check

    inspect, calls = check._inspected, []

    def stopped_at_the_second_row(row, policy):
        calls.append(row.id)
        if len(calls) == 2:
            raise Terminated
        return inspect(row, policy)

    manifest = write_jsonl(tmp_path / "m.jsonl", [row("a", video="gone.mp4"), row("b", transcript="Fine.")])
    monkeypatch.setattr(check, "_inspected", stopped_at_the_second_row)
    assert main(["data", "check", str(manifest), "--out", str(tmp_path / "out")]) == 143
    assert "finished work is kept, run the same command again to go on" in capsys.readouterr().err
    monkeypatch.setattr(check, "_inspected", inspect)
    assert main(["data", "check", str(manifest), "--out", str(tmp_path / "out")]) == 1  # row a: no file
    out = capsys.readouterr().out
    assert "2 rows: 1 good, 1 quarantined" in out
    assert "1 rows' media were checked by the stopped run before this one and not decoded again" in out
