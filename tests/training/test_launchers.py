"""Launcher files: every accelerate config loads, DeepSpeed files exist, the SLURM script builds the right command."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / "training" / "accelerate"
CONFIGS = [
    "single_gpu",
    "multi_gpu_ddp",
    "fsdp",
    "deepspeed_zero2",
    "deepspeed_zero3",
    "multi_node",
    "cpu_2proc",
]


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_config_loads(name: str) -> None:
    config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))
    assert config.num_processes >= 1 and config.num_machines >= 1
    if name.startswith("deepspeed"):
        ds_file = REPO / config.deepspeed_config["deepspeed_config_file"]
        stage = json.loads(ds_file.read_text())["zero_optimization"]["stage"]
        assert stage == int(name[-1])
    if name == "fsdp":
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert "Qwen2DecoderLayer" in config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]


def _fake(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_script_launches_accelerate_on_every_node(tmp_path: Path) -> None:
    """With srun/scontrol/accelerate replaced by recorders, node 1 of 2 gets rank 1 and node 0's address."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    _fake(bin_dir, "scontrol", "printf 'gpu-a\\ngpu-b\\n'")
    _fake(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done; exec "$@"')
    _fake(bin_dir, "accelerate", f'echo "accelerate $*" >> {log}')
    _fake(bin_dir, "affect-llm", f'echo "affect-llm $*" >> {log}')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "GPUS_PER_NODE": "4",
        "CONFIG": "training/gpu_7b_qlora.yaml",
    }
    script = REPO / "training" / "slurm" / "train.sbatch"
    done = subprocess.run(
        ["bash", str(script), "train.grad_accum=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    check, launch = log.read_text().splitlines()
    assert check == "affect-llm train training/gpu_7b_qlora.yaml train.grad_accum=2 --check"
    assert "--num_machines 2 --num_processes 8 --machine_rank 1 --main_process_ip gpu-a" in launch
    assert launch.endswith("-m affect_llm.cli.main train training/gpu_7b_qlora.yaml train.grad_accum=2")
