"""Resumable training state and the run record.

The state of a stage in progress is written every ``checkpoint_every`` steps and ``--resume``
restores it, replaying the seeded sample schedule from the next step, so an interrupted run reaches
the losses of one that was not interrupted, on one process or many:

- trainable weights and optimizer state through ``torch.distributed.checkpoint``, which every
  process takes part in: under FSDP each writes its own shards, under DDP one copy is written;
  frozen weights are not saved (they are the stage's starting point). Under DeepSpeed (ZeRO-2/3)
  the engine owns both, and accelerate's ``save_state`` / ``load_state`` write them;
- the scheduler and the step;
- every process's RNG: Python, numpy, torch CPU and every CUDA device.

Everything goes to ``state.tmp`` first; once every process wrote its part, the main process swaps
it into ``state``, so a kill at any moment leaves the previous state whole (a kill between the
swap's two renames leaves it as ``state.tmp`` or ``state.old``, which :func:`saved_step` puts back).
"""

from __future__ import annotations

import json
import platform
import random
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from affect_llm.fileio import finish_folder_swap, share_written_weights, swap_folder_into_place

LIBRARIES = ("affect-llm", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "decord", "librosa")
PROGRESS_FILE = "progress.json"


def _raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate wraps prepared optimizers


def _strip_wrapper(name: str) -> str:
    return name.removeprefix("module.")


def rng_state() -> dict[str, Any]:
    """This process's RNG: Python, numpy, torch CPU and every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dcp_state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    model_state, optimizer_state = get_state_dict(model, _raw_optimizer(optimizer), options=options)
    frozen = _frozen_parameter_names(model)
    # A frozen 4-bit weight leaves entries beside it that are not parameters (bitsandbytes'
    # ``weight.absmax``, ``weight.quant_state.*``): they belong to the frozen LLM, not to the state.
    model_state = {key: value for key, value in model_state.items() if not _extends_frozen(key, frozen)}
    return {"model": model_state, "optimizer": optimizer_state}


def _frozen_parameter_names(model: torch.nn.Module) -> set[str]:
    return {_strip_wrapper(name) for name, p in model.named_parameters() if not p.requires_grad}


def _extends_frozen(key: str, frozen: set[str]) -> bool:
    """Whether ``key`` names something stored under a frozen parameter (``<frozen>.absmax``)."""
    parts = key.split(".")
    return any(".".join(parts[:end]) in frozen for end in range(1, len(parts)))


def save_training_state(
    state_dir: Path, accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any, step: int
) -> None:
    """Write the state after ``step`` optimizer steps; every process calls this."""
    import torch.distributed.checkpoint as dcp

    tmp = state_dir.with_name(state_dir.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.save_state(str(tmp / "accelerate"))
    else:
        dcp.save(_dcp_state(model, optimizer), checkpoint_id=str(tmp / "dcp"))
    torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        share_written_weights(tmp)
        # Written last: a folder with a progress file holds every part.
        (tmp / PROGRESS_FILE).write_text(json.dumps({"step": step, "world_size": accelerator.num_processes}) + "\n")
        commit_training_state(state_dir)
    accelerator.wait_for_everyone()


def commit_training_state(state_dir: Path) -> None:
    """Swap the freshly written state into place (called once all processes wrote theirs)."""
    swap_folder_into_place(state_dir.with_name(state_dir.name + ".tmp"), state_dir, PROGRESS_FILE)


def _finish_interrupted_swap(state_dir: Path) -> None:
    """Complete a :func:`commit_training_state` that a kill cut between its two renames.

    Then ``state`` is gone and ``state.tmp`` (the newer, complete: its progress file is written
    last) or ``state.old`` holds the state; it is put back.
    """
    finish_folder_swap(state_dir, PROGRESS_FILE, keep_old=True)


def saved_step(state_dir: Path) -> int | None:
    """The step a complete saved state continues from, or None when there is none (a swap of a newer
    state cut short by a kill is completed first)."""
    _finish_interrupted_swap(state_dir)
    path = state_dir / PROGRESS_FILE
    return int(json.loads(path.read_text())["step"]) if path.is_file() else None


def load_training_state(
    state_dir: Path, accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any
) -> int:
    """Restore what :func:`save_training_state` wrote; returns the step to continue from.

    Raises:
        ValueError: The saved weights do not match the model's trainable weights (names listed),
            or the state was written by another number of processes (its RNG files differ).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    progress = json.loads((state_dir / PROGRESS_FILE).read_text())
    rng_path = state_dir / f"rng_{accelerator.process_index}.pt"
    if progress.get("world_size", accelerator.num_processes) != accelerator.num_processes or not rng_path.is_file():
        raise ValueError(f"{state_dir}: written by {progress.get('world_size')} processes, resumed by "
                         f"{accelerator.num_processes}; resume with the process count it was written with")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.load_state(str(state_dir / "accelerate"))
    else:
        state = _dcp_state(model, optimizer)
        saved = set(dcp.FileSystemReader(str(state_dir / "dcp")).read_metadata().state_dict_metadata)
        absent = sorted(f"model.{key}" for key in state["model"] if f"model.{key}" not in saved)
        if absent:
            raise ValueError(f"{state_dir}: saved state does not match the model's trainable weights: "
                             f"missing {absent[:5]}")
        try:
            # Partial: a parameter that had no gradient before the save (a modality no batch had
            # yet) has no optimizer state in it; the fresh optimizer's empty state for it is what
            # the uninterrupted run had then.
            dcp.load(state, checkpoint_id=str(state_dir / "dcp"),
                     planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
        except (RuntimeError, ValueError) as error:  # DCP names the mismatching keys
            raise ValueError(f"{state_dir}: saved state does not match the model's trainable weights: {error}") from error
        result = set_state_dict(model, _raw_optimizer(optimizer), model_state_dict=state["model"],
                                optim_state_dict=state["optimizer"], options=StateDictOptions(strict=False))
        frozen = _frozen_parameter_names(model)
        missing = sorted(key for key in {_strip_wrapper(k) for k in result.missing_keys}
                         if key not in frozen and not _extends_frozen(key, frozen))
        if missing or result.unexpected_keys:
            raise ValueError(f"{state_dir}: saved trainable weights do not match the model: missing {missing[:5]}, "
                             f"unexpected {sorted(result.unexpected_keys)[:5]}")
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(rng_path, weights_only=False))
    return int(progress["step"])


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
