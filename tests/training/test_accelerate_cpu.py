"""Data parallel on CPU: two processes at half the batch reach the losses of one process at the full batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from trainhelpers import read_losses, tiny_config, write_config

from affect_llm.training.config import TrainConfig
from affect_llm.training.recipe import CurriculumRecipe

REPO = Path(__file__).resolve().parents[2]
BATCH = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _raw(manifest: Path, run_dir: Path, cache: Path, batch_size: int) -> dict:
    raw = tiny_config(manifest, run_dir, cache, stages=1, batch_size=batch_size)
    raw["stages"][0].update(trainable=["projectors", "lora"], steps=3)
    return raw


def test_two_processes_match_one(synth_manifest: Path, feature_cache: Path, tmp_path: Path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed beside this interpreter")
    single = tmp_path / "single"
    raw = _raw(synth_manifest, single, feature_cache, BATCH)
    CurriculumRecipe(TrainConfig.from_dict(raw, {"evidence", "perceive", "reason"})).run()

    double = tmp_path / "double"
    config = write_config(tmp_path / "double.yaml", _raw(synth_manifest, double, feature_cache, BATCH // 2))
    command = [
        accelerate,
        "launch",
        "--config_file",
        str(REPO / "training/accelerate/cpu_2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        "-m",
        "affect_llm.cli.main",
        "train",
        str(config),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    assert json.loads((double / "run_info.json").read_text())["world_size"] == 2
    expected, got = read_losses(single), read_losses(double)
    assert sorted(got) == sorted(expected) == [1, 2, 3]
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), f"step {step}"
