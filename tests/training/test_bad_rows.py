"""Training on a manifest with bad lines and bad media: recorded and left out, a hard stop only with --strict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from trainhelpers import tiny_config, write_config

from affect_llm.fileio import OutputLock
from affect_llm.training.config import TrainConfig
from affect_llm.training.data_check import load_splits


def _train(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "train", str(config), *args],
                          capture_output=True, text=True, timeout=600, check=False, env=env)


@pytest.fixture(scope="module")
def dirty(synth_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic manifest plus: a cut-short line, a repeated id, NaN audio, and a row without a split."""
    root = tmp_path_factory.mktemp("dirty")
    sf.write(str(root / "nan.wav"), np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    lines = []
    for line in synth_manifest.read_text().splitlines():
        row = json.loads(line)
        for field in ("video", "audio", "image"):
            if row.get(field):
                row[field] = str(synth_manifest.parent / row[field])
        lines.append(json.dumps(row))
    first = json.loads(lines[0])
    lines += [
        '{"id": "cut", "audio": "x.wav", "spl',
        json.dumps({**first, "transcript": "the same id again"}),
        json.dumps({"id": "nan-audio", "audio": str(root / "nan.wav"), "labels": ["happy"], "split": "train"}),
        json.dumps({"id": "no-split", "transcript": "I am fine.", "labels": ["neutral"]}),
    ]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def _bad_lines(dirty: Path) -> list[tuple[int, str]]:
    """(line, code) of the two lines the fixture appended that the reader must refuse."""
    count = len(dirty.read_text().splitlines())
    return [(count - 3, "manifest"), (count - 2, "duplicate_id")]


def _config(dirty: Path, run_dir: Path, cache: Path) -> Path:
    raw = tiny_config(dirty, run_dir, cache, stages=1)
    raw["stages"][0]["steps"] = 2
    return write_config(run_dir.parent / "config.yaml", raw)


def test_a_row_without_split_is_in_no_split(dirty: Path, tmp_path: Path) -> None:
    config = TrainConfig.from_dict(tiny_config(dirty, tmp_path / "run", None), {"perceive", "reason", "evidence"})
    refused: list[dict] = []
    splits = load_splits(config, refused=refused)
    ids = {row.id for part in splits["synth"].values() for row in part}
    assert "no-split" not in ids and "nan-audio" in ids
    assert [(item["line"], item["code"]) for item in refused] == _bad_lines(dirty)


def test_training_records_bad_lines_and_media_and_goes_on(dirty: Path, feature_cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _train(_config(dirty, run_dir, feature_cache))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert [(item["line"], item["code"]) for item in result["refused_lines"]] == _bad_lines(dirty)
    assert list(result["refused_rows"]) == ["nan-audio"] and "NaN/inf samples" in result["refused_rows"]["nan-audio"]
    assert "refused: 2 manifest lines, 1 rows whose media the checks refused" in proc.stdout
    assert "Traceback" not in proc.stderr and (run_dir / "final").is_dir()
    assert (run_dir / "train.log").is_file() and not (run_dir / "run.lock").exists()


def test_strict_training_stops_at_the_first_bad_line(dirty: Path, feature_cache: Path, tmp_path: Path) -> None:
    proc = _train(_config(dirty, tmp_path / "run", feature_cache), "--strict")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    line = _bad_lines(dirty)[0][0]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"affect-llm train: error: dataset 'synth': manifest.jsonl:{line}")


def test_a_run_folder_in_use_is_refused(dirty: Path, feature_cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = _config(dirty, run_dir, feature_cache)
    with OutputLock(run_dir, run_dir / "run.lock"):  # held by this test process
        proc = _train(config)
    assert proc.returncode == 4
    assert f"is being written by process {os.getpid()}" in proc.stderr.strip().splitlines()[-1]
    assert not (run_dir / "stages").exists()


def _two_set_config(first: Path, second: Path, run_dir: Path) -> Path:
    raw = tiny_config(first, run_dir, None, stages=1)
    raw["data"]["datasets"]["second"] = {"manifest": str(second)}
    raw["stages"][0]["datasets"] = {"synth": 1.0, "second": 1.0}
    return write_config(run_dir.parent / "config.yaml", raw)


def test_two_sets_whose_rows_share_ids_are_refused_before_training(dirty: Path, tmp_path: Path) -> None:
    # A second set with the same ids (here: the same rows, their words changed) would train each shared
    # id on one set's features with the other's answers; training finds features by id.
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in dirty.read_text().splitlines()[:6]]
    other.write_text("".join(json.dumps({**row, "transcript": "Other words."}) + "\n" for row in rows))
    config = _two_set_config(dirty, other, tmp_path / "run")
    for args in (["--check"], []):
        proc = _train(config, *args)
        assert proc.returncode != 0, proc.stdout
        message = proc.stdout + proc.stderr
        assert f"datasets 'synth' ({dirty}) and 'second' ({other}) share 6 row ids ('{rows[0]['id']}'" in message
        assert "--id-prefix" in message and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "stages").exists()
    # Renamed, the two sets train side by side; one manifest named twice is one set of clips.
    other.write_text("".join(json.dumps({**row, "id": "other-" + row["id"]}) + "\n" for row in rows))
    assert _train(config, "--check").returncode == 0
    assert _train(_two_set_config(dirty, dirty, tmp_path / "run"), "--check").returncode == 0
