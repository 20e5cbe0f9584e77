from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datahelpers import make_wav, row, write_jsonl

from affect_llm.data.check import _inspected as _inspect_row
from affect_llm.data.check import check_manifest
from affect_llm.data.issues import MediaPolicy
from affect_llm.data.manifest import load_manifest


def _seeded_manifest(root: Path, media_dir: Path) -> Path:
    shutil.copy(media_dir / "av.mp4", root / "good.mp4")
    shutil.copy(media_dir / "tone.wav", root / "good.wav")
    (root / "zero.mp4").write_bytes(b"")
    data = (media_dir / "av.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    sf.write(str(root / "nan.wav"), np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    make_wav(root / "stereo8k.wav", sample_rate=8000, channels=2)
    make_wav(root / "short.wav", seconds=0.1)
    make_wav(root / "silent.wav", amplitude=0.0)
    bad_text = json.dumps(row("latin1", audio="good.wav", transcript="caf@")).encode().replace(b"@", b"\xe9")
    rows = [
        row("good_video", video="good.mp4", transcript="hello"),  # 1
        row("missing", video="nope.mp4"),  # 2
        row("zero", video="zero.mp4"),  # 3
        row("truncated", video="truncated.mp4"),  # 4
        row("nan", audio="nan.wav"),  # 5
        row("stereo8k", audio="stereo8k.wav"),  # 6
        row("short", audio="short.wav"),  # 7
        bad_text,  # 8
        row("good_audio", audio="good.wav"),  # 9
        row("good_video", audio="good.wav"),  # 10: duplicate id
        row("silent", audio="silent.wav"),  # 11
        row("badlabels", audio="good.wav", labels="happy"),  # 12
        row("text_only", transcript="I am fine."),  # 13
    ]
    return write_jsonl(root / "manifest.jsonl", rows)


def test_check_reports_each_bad_row_by_line_and_keeps_good_rows(tmp_path: Path, media_dir: Path) -> None:
    manifest = _seeded_manifest(tmp_path, media_dir)
    out = tmp_path / "check"
    report = check_manifest(manifest, out)
    errors = {(i.line, i.field): i.reason for i in report.errors()}
    expected = {
        (2, "video"): "file not found",
        (3, "video"): "empty file",
        (4, "video"): "cannot decode video",
        (5, "audio"): "NaN",
        (7, "audio"): "too short",
        (8, "transcript"): "not valid UTF-8",
        (10, "id"): "duplicate id 'good_video' (first on line 1, which is used)",
        (11, "audio"): "silent",
        (12, "labels"): "expected a list of strings",
    }
    for key, reason in expected.items():
        assert key in errors, f"no error reported for line/field {key}"
        assert reason in errors[key]
    assert report.bad_lines == sorted(line for line, _ in expected)
    # Telephone-band stereo speech is usable: two warnings, no error.
    warnings = {(i.line, i.code) for i in report.warnings()}
    assert {(6, "low_sample_rate"), (6, "multichannel")} <= warnings

    clean = load_manifest(out / "clean.jsonl")
    assert [r.id for r in clean] == ["good_video", "stereo8k", "good_audio", "text_only"]
    # Relative paths were rewritten to resolve from the output folder.
    assert clean[0].media_path("video").resolve() == (tmp_path / "good.mp4").resolve()
    quarantined = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantined] == report.bad_lines
    assert quarantined[0] == {"line": 2, "id": "missing", "reasons": ["video: file not found"]}
    saved = json.loads((out / "report.json").read_text())
    assert saved["num_good"] == 4 and saved["num_bad"] == len(expected)
    assert saved["counts"]["errors"]["duplicate_id"] == 1
    markdown = (out / "report.md").read_text()
    assert "| 4 | truncated | video | error |" in markdown
    assert "- errors: " in markdown and "`duplicate_id` 1" in markdown  # each kind counted


def test_the_markdown_table_keeps_one_row_per_issue_whatever_the_ids_hold(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [row("take|1", video="gone|1.mp4"), row("b", video="gone.mp4")])
    out = tmp_path / "out"
    check_manifest(manifest, out)
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2  # the header, then one row per missing file
    assert all(line.replace("\\|", "").count("|") == 7 for line in table)  # six cells each
    assert table[1].startswith("| 1 | take\\|1 | video | error | missing |")


def test_check_of_clean_manifest_has_no_errors(tmp_path: Path, media_dir: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [row("a", video=str(media_dir / "av.mp4"))])
    report = check_manifest(manifest, None)
    assert report.num_good == 1 and report.errors() == []
    assert report.to_dict()["durations"]["video"]["count"] == 1


def test_min_sample_rate_turns_low_rate_audio_into_an_error(tmp_path: Path) -> None:
    make_wav(tmp_path / "phone.wav", sample_rate=8000)
    manifest = write_jsonl(tmp_path / "m.jsonl", [row("phone", audio="phone.wav")])
    assert check_manifest(manifest).num_bad == 0
    strict = check_manifest(manifest, policy=MediaPolicy(min_sample_rate=16000))
    assert [(i.code, i.severity) for i in strict.issues] == [("below_min_sample_rate", "error")]


class _Counted:
    """``check._inspected`` that counts the rows it inspects and raises ``stop`` before the row ``stop_at``."""

    def __init__(self, stop_at: int | None = None, stop: type[BaseException] = KeyboardInterrupt) -> None:
        self.stop_at, self.stop, self.ids = stop_at, stop, []

    def __call__(self, row, policy):
        if self.stop_at is not None and len(self.ids) + 1 == self.stop_at:
            raise self.stop
        self.ids.append(row.id)
        return _inspect_row(row, policy)


def _check_counted(monkeypatch, manifest: Path, out: Path, stop_at: int | None = None,
                   stop: type[BaseException] = KeyboardInterrupt):
    """``check_manifest`` with its inspections counted; stopped (``stop`` raised) before row ``stop_at``
    when given. Returns the counter and the report (None when stopped)."""
    from affect_llm.data import check

    counted = _Counted(stop_at, stop)
    monkeypatch.setattr(check, "_inspected", counted)
    if stop_at is None:
        return counted, check_manifest(manifest, out)
    with pytest.raises(stop):
        check_manifest(manifest, out)
    return counted, None


def _reports_equal(one: Path, other: Path) -> None:
    first, second = (json.loads((folder / "report.json").read_text()) for folder in (one, other))
    first.pop("outputs"), second.pop("outputs")
    assert first == second
    assert (one / "clean.jsonl").read_text().count("\n") == (other / "clean.jsonl").read_text().count("\n")


def test_a_stopped_check_goes_on_from_the_rows_it_checked(tmp_path: Path, media_dir: Path, monkeypatch) -> None:
    """Stopped after five rows (as Ctrl-C or SIGTERM stop it), run again: only the rest are decoded,
    and the reports are those of a check that was never stopped."""
    from affect_llm.cli.errors import Terminated
    from affect_llm.data.check_journal import JOURNAL_NAME

    manifest = _seeded_manifest(tmp_path, media_dir)
    straight, _ = _check_counted(monkeypatch, manifest, tmp_path / "straight")
    stopped, _ = _check_counted(monkeypatch, manifest, tmp_path / "out", stop_at=6, stop=Terminated)
    journal = tmp_path / "out" / JOURNAL_NAME
    assert len(journal.read_text().splitlines()) == 1 + 5  # its header, then the five rows checked
    assert not (tmp_path / "out" / "report.json").exists()

    again, report = _check_counted(monkeypatch, manifest, tmp_path / "out")
    assert stopped.ids == straight.ids[:5] and again.ids == straight.ids[5:]
    assert report.rows_reused == 5 and not journal.exists()
    _reports_equal(tmp_path / "straight", tmp_path / "out")


def test_a_row_whose_file_changed_or_a_changed_manifest_is_checked_again(tmp_path: Path, media_dir: Path,
                                                                           monkeypatch) -> None:
    manifest = _seeded_manifest(tmp_path, media_dir)
    _check_counted(monkeypatch, manifest, tmp_path / "out", stop_at=3)
    # The good video, journaled as good, is replaced by the truncated one: its verdict must not stand.
    shutil.copy(tmp_path / "truncated.mp4", tmp_path / "good.mp4")
    again, report = _check_counted(monkeypatch, manifest, tmp_path / "out")
    assert "good_video" in again.ids and "missing" not in again.ids and report.rows_reused == 1
    assert 1 in report.bad_lines

    _check_counted(monkeypatch, manifest, tmp_path / "out2", stop_at=3)
    with manifest.open("a") as handle:
        handle.write(json.dumps(row("late", transcript="One more.")) + "\n")
    again, report = _check_counted(monkeypatch, manifest, tmp_path / "out2")
    assert again.ids[:2] == ["good_video", "missing"] and report.rows_reused == 0


def test_a_line_cut_by_a_kill_is_dropped_and_the_rows_before_it_kept(tmp_path: Path, media_dir: Path,
                                                                        monkeypatch) -> None:
    """SIGKILL can land in the middle of an append: the journal's whole lines stand, the cut one goes."""
    from affect_llm.data.check_journal import JOURNAL_NAME

    manifest = _seeded_manifest(tmp_path, media_dir)
    _check_counted(monkeypatch, manifest, tmp_path / "out", stop_at=4)
    journal = tmp_path / "out" / JOURNAL_NAME
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"line": 5, "id": "na')
    _check_counted(monkeypatch, manifest, tmp_path / "out", stop_at=3)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 3 + 2 and all(json.loads(line) for line in lines)  # appended after the cut
    again, report = _check_counted(monkeypatch, manifest, tmp_path / "out")
    assert report.rows_reused == 5 and again.ids[0] == "stereo8k" and not journal.exists()
