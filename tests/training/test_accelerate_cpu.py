"""Data parallel on CPU: two processes at half the batch reach the losses of one process at the full batch.

With ``model.audio_speaker_normalisation`` each process reads its share of every speaker's clips and
the sums are all-reduced: a process that used its own share's statistics would train on other inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainhelpers import read_losses, tiny_config, with_speakers, write_config

from affect_llm.features.speakers import load_statistics
from affect_llm.training.config import TrainConfig
from affect_llm.training.recipe import SPEAKER_STATISTICS_FILE, CurriculumRecipe

REPO = Path(__file__).resolve().parents[2]
BATCH = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _raw(manifest: Path, run_dir: Path, cache: Path, batch_size: int, speakers: bool) -> dict:
    raw = tiny_config(manifest, run_dir, cache, stages=1, batch_size=batch_size)
    raw["stages"][0].update(trainable=["projectors", "lora"], steps=3)
    raw["model"]["audio_speaker_normalisation"] = speakers
    return raw


@pytest.mark.parametrize("speakers", [False, True], ids=["", "speaker-standardised"])
def test_two_processes_match_one(synth_manifest: Path, feature_cache: Path, tmp_path: Path, speakers: bool) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed beside this interpreter")
    if speakers:
        synth_manifest = with_speakers(synth_manifest, tmp_path / "manifest.jsonl")
    single = tmp_path / "single"
    raw = _raw(synth_manifest, single, feature_cache, BATCH, speakers)
    CurriculumRecipe(TrainConfig.from_dict(raw, {"evidence", "perceive", "reason"})).run()

    double = tmp_path / "double"
    config = write_config(tmp_path / "double.yaml", _raw(synth_manifest, double, feature_cache, BATCH // 2, speakers))
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
    if speakers:  # every process's share summed: the statistics of all of each speaker's clips
        one = load_statistics(single / SPEAKER_STATISTICS_FILE)
        two = load_statistics(double / SPEAKER_STATISTICS_FILE)
        assert sorted(one) == sorted(two) and len(one) == 2
        for speaker, (mean, std) in one.items():
            torch.testing.assert_close(two[speaker][0], mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(two[speaker][1], std, rtol=1e-5, atol=1e-6)
