"""Resumable training state and the run record.

The state of a stage in progress (trainable weights, optimizer, scheduler, RNG, step) is written
atomically every ``checkpoint_every`` steps; ``--resume`` restores it and replays the fixed sample
schedule from the next step, so an interrupted run reaches the same losses.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from affect_llm.modeling.pretrained import load_strict

LIBRARIES = ("affect-llm", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "decord", "librosa")


def save_training_state(
    state_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, step: int, rank: int
) -> None:
    """Write trainable weights + optimizer + scheduler + RNG + step into ``state_dir`` atomically."""
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    else:
        tmp.mkdir(parents=True, exist_ok=True)
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    torch.save(rng, tmp / f"rng_{rank}.pt")
    if rank == 0:
        (tmp / "progress.json").write_text(json.dumps({"step": step}) + "\n")


def commit_training_state(state_dir: Path) -> None:
    """Swap the freshly written state into place (called once all processes wrote theirs)."""
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    old = state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        os.replace(state_dir, old)
    os.replace(tmp, state_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(state_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, rank: int) -> int:
    """Restore what :func:`save_training_state` wrote; returns the step to continue from."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = load_file(str(state_dir / "trainable.safetensors"))
    if set(saved) != set(trainable):
        raise ValueError(
            f"{state_dir}: saved trainable weights do not match the model: "
            f"missing {sorted(set(trainable) - set(saved))[:5]}, unexpected {sorted(set(saved) - set(trainable))[:5]}"
        )
    holder = torch.nn.Module()
    for i, (_name, param) in enumerate(trainable.items()):
        holder.register_parameter(f"p{i}", param)
    load_strict(holder, {f"p{i}": saved[name] for i, name in enumerate(trainable)}, f"{state_dir}/trainable.safetensors")
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    rng_path = state_dir / f"rng_{rank}.pt"
    if rng_path.is_file():
        rng = torch.load(rng_path, weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return int(json.loads((state_dir / "progress.json").read_text())["step"])


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
