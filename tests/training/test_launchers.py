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


def _explain_array(tmp_path: Path, squeue: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The explain array script with ``affect-llm`` and ``squeue`` replaced by recorders (no SLURM here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    _fake(bin_dir, "affect-llm", f'echo "affect-llm $*" >> {log}')
    _fake(bin_dir, "squeue", squeue)
    settings = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MANIFEST": "m.jsonl", "MODEL": "ckpt",
                "OUT": "out", "SLURM_JOB_ID": "900", "SLURM_CPUS_PER_TASK": "4", **env}
    done = subprocess.run(["bash", str(REPO / "training" / "slurm" / "explain_array.sbatch"), "--split", "test"],
                          cwd=tmp_path, env=settings, capture_output=True, text=True, timeout=30)
    return done, log


def _array(task: int, low: int, high: int, count: int) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_MAX": str(high),
            "SLURM_ARRAY_TASK_COUNT": str(count)}


def test_explain_array_takes_its_shard_count_from_a_whole_array_or_from_shards(tmp_path: Path) -> None:
    done, log = _explain_array(tmp_path, "exit 0", **_array(3, 0, 15, 16))
    assert done.returncode == 0, done.stderr
    assert log.read_text().strip() == ("affect-llm explain m.jsonl --model ckpt --out out/shard-3-of-16.jsonl "
                                       "--shard 3/16 --decode-workers 2 --split test")
    # --array=3,7: two tasks, which are not the shards 0 and 1 of two.
    part, _ = _explain_array(tmp_path, "exit 0", **_array(3, 3, 7, 2))
    assert part.returncode == 2 and "set SHARDS to the shard count" in part.stderr
    rerun, log = _explain_array(tmp_path, "exit 0", SHARDS="16", **_array(7, 3, 7, 2))
    assert rerun.returncode == 0 and "--shard 7/16" in log.read_text().splitlines()[-1]
    # --array=0,1 into a folder holding the shards of 16: refused, not a new 2-way split.
    (tmp_path / "out" / "shard-3-of-16.jsonl").write_text("")
    other, _ = _explain_array(tmp_path, "exit 0", **_array(1, 0, 1, 2))
    assert other.returncode == 2 and "holds shards of a 16-way split" in other.stderr


def test_explain_array_removes_a_lock_only_when_its_job_has_ended(tmp_path: Path) -> None:
    lock = tmp_path / "out" / "shard-0-of-2.jsonl.lock"
    lock.parent.mkdir(parents=True)
    holder = {"host": "node17", "pid": 4242, "since": "2026-12-01T00:00:00+0000", "command": "affect-llm explain",
              "slurm_job": "812"}
    lock.write_text(json.dumps(holder) + "\n")
    running, _ = _explain_array(tmp_path, 'echo RUNNING', **_array(0, 0, 1, 2))
    assert running.returncode == 0 and lock.exists()  # explain itself then refuses, naming node17
    unsure, _ = _explain_array(tmp_path, 'echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1',
                               **_array(0, 0, 1, 2))
    assert unsure.returncode == 0 and lock.exists()
    ended, _ = _explain_array(tmp_path, 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1',
                              **_array(0, 0, 1, 2))
    assert ended.returncode == 0 and not lock.exists()
    assert "removing out/shard-0-of-2.jsonl.lock, left by job 812" in ended.stdout


def test_the_output_lock_records_the_slurm_job(tmp_path: Path, monkeypatch) -> None:
    from affect_llm.fileio import OutputLock, read_lock

    monkeypatch.setenv("SLURM_JOB_ID", "812")
    with OutputLock(tmp_path / "o.jsonl") as lock:
        assert read_lock(lock.path)["slurm_job"] == "812"


def test_a_requeued_training_job_resumes(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    _fake(bin_dir, "scontrol", "printf 'gpu-a\\n'")
    _fake(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done; exec "$@"')
    _fake(bin_dir, "accelerate", f'echo "accelerate $*" >> {log}')
    _fake(bin_dir, "affect-llm", f'echo "affect-llm $*" >> {log}')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a", "SLURM_NNODES": "1",
           "SLURM_NODEID": "0", "GPUS_PER_NODE": "1", "SLURM_RESTART_COUNT": "1"}
    done = subprocess.run(["bash", str(REPO / "training" / "slurm" / "train.sbatch")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    check, launch = log.read_text().splitlines()
    assert check.endswith("--resume --check") and launch.endswith("train training/gpu_7b_lora_bf16.yaml --resume")
