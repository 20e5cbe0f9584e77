"""Kill and resume: a training process SIGKILLed at a random step and resumed reaches the losses of
an uninterrupted run, on one process, on two (DDP over gloo) and on two fully sharded (FSDP2 over gloo).

LoRA dropout is on, so the losses match only when every process's RNG comes back as well as the
weights, the optimizer, the scheduler and the sample order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from trainhelpers import read_losses, run_and_kill, tiny_config, write_config

REPO = Path(__file__).resolve().parents[2]
NUM_STEPS = 10
CHECKPOINT_EVERY = 2
LAUNCHERS = {
    "single": None,
    "ddp": REPO / "training/accelerate/cpu_2proc.yaml",
    "fsdp": REPO / "training/accelerate/cpu_2proc_fsdp.yaml",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(launcher: str, config: Path, resume: bool) -> list[str]:
    train = ["-m", "affect_llm.cli.main", "train", str(config), *(["--resume"] if resume else [])]
    if LAUNCHERS[launcher] is None:
        return [sys.executable, *train]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed beside this interpreter")
    return [accelerate, "launch", "--config_file", str(LAUNCHERS[launcher]), "--main_process_port",
            str(_free_port()), *train]


def _config(folder: Path, manifest: Path, cache: Path, launcher: str) -> Path:
    batch = 4 if launcher == "single" else 2  # the same global batch of 4
    raw = tiny_config(manifest, folder / "run", cache, stages=1, checkpoint_every=CHECKPOINT_EVERY, batch_size=batch)
    raw["lora"]["dropout"] = 0.1
    # LoRA and projectors both train, so the optimizer state of both must come back on resume.
    raw["stages"][0].update(trainable=["projectors", "lora"], steps=NUM_STEPS, warmup_steps=2)
    return write_config(folder / "config.yaml", raw)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(launcher: str, config: Path, cwd: Path, resume: bool = False) -> None:
    done = subprocess.run(_command(launcher, config, resume), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_killed_and_resumed_run_matches_an_uninterrupted_one(
    launcher: str, synth_manifest: Path, feature_cache: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    straight.mkdir()
    _run(launcher, _config(straight, synth_manifest, feature_cache, launcher), straight)
    expected = read_losses(straight / "run")
    assert sorted(expected) == list(range(1, NUM_STEPS + 1))
    # Losses must move, or equality would prove nothing about the restored optimizer.
    assert len({round(v, 6) for v in expected.values()}) > NUM_STEPS // 2
    info = json.loads((straight / "run" / "run_info.json").read_text())
    assert info["world_size"] == (1 if launcher == "single" else 2)
    assert info["sharding"] == {"single": "NO", "ddp": "MULTI_CPU", "fsdp": "fsdp2"}[launcher]

    killed = tmp_path / "killed"
    killed.mkdir()
    config = _config(killed, synth_manifest, feature_cache, launcher)
    kill_at = random.randint(1, NUM_STEPS // 2)
    last = run_and_kill(_command(launcher, config, resume=False), killed, _env(), killed / "run" / "log.jsonl", kill_at)
    stage_dir = killed / "run" / "stages" / "align"
    assert not (stage_dir / "stage_done.json").exists(), f"killed after step {last}: the run had finished"
    _run(launcher, config, killed, resume=True)

    resumed = read_losses(killed / "run")
    assert sorted(resumed) == list(range(1, NUM_STEPS + 1))
    # The steps the killed run logged after its last saved state were redone: the log holds each once.
    logged = [json.loads(line)["step"] for line in (killed / "run" / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, NUM_STEPS + 1)), f"killed after step {last}"
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), f"step {step} (killed after step {last})"
    assert not (stage_dir / "state").exists() and (stage_dir / "stage_done.json").is_file()
