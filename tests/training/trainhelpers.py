"""Helpers of the training tests: a tiny raw config on the synthetic set, and its YAML file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def tiny_config(
    manifest: Path, run_dir: Path, cache: Path | None, stages: int = 1, **train: Any
) -> dict[str, Any]:
    """A raw config mapping on tiny random models (dropout 0 so losses are reproducible)."""
    stage_list = [
        {
            "name": "align",
            "datasets": {"synth": 1.0},
            "tasks": {"perceive": 1.0},
            "trainable": ["projectors"],
            "lr": 3.0e-3,
            "schedule": "cosine",
            "warmup_steps": 1,
            "steps": 4,
        },
        {
            "name": "reason",
            "datasets": {"synth": 1.0},
            "tasks": {"perceive": 0.5, "reason": 0.5},
            "trainable": ["projectors", "lora"],
            "lr": 2.0e-3,
            "steps": 2,
        },
    ][:stages]
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {
            "llm": "tiny:llm",
            "audio_encoder": "tiny:whisper",
            "face_encoder": "tiny:fer",
            "audio_window_seconds": 4.0,
            "num_audio_tokens": 4,
            "num_face_tokens": 2,
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {
            "datasets": {"synth": {"manifest": str(manifest)}},
            "num_frames": 2,
            "feature_cache": str(cache) if cache else None,
            "decode_workers": 1,
        },
        "train": {"batch_size": 4, "log_every": 1, "checkpoint_every": 0, "val_max_samples": 8, **train},
        "stages": stage_list,
    }


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def with_speakers(manifest: Path, out: Path) -> Path:
    """The manifest with speakers a and b alternating (media paths made absolute) and the first row unnamed."""
    lines = []
    for index, line in enumerate(manifest.read_text().splitlines()):
        record = json.loads(line)
        for field in ("video", "audio", "image"):
            if record.get(field):
                record[field] = str(manifest.parent / record[field])
        record.setdefault("extra", {})["speaker"] = "ab"[index % 2] if index else None
        lines.append(json.dumps(record))
    out.write_text("\n".join(lines) + "\n")
    return out


def read_losses(run_dir: Path, stage: str | None = None) -> dict[int, float]:
    """Step -> loss from ``log.jsonl`` (the last record of a step wins, as after a resume)."""
    losses = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if stage is None or record["stage"] == stage:
            losses[record["step"]] = record["loss"]
    return losses


def run_and_kill(command: list[str], cwd: Path, env: dict[str, str], log: Path, after_step: int,
                 timeout: float = 300.0) -> int:
    """Start ``command`` in its own process group; SIGKILL the whole group (every rank and loader
    worker) once ``log`` records step ``after_step``. Returns the last step logged before the kill.

    Raises:
        AssertionError: If the command ends on its own first, or no such step is logged in time.
    """
    import os
    import signal
    import subprocess
    import time

    output = cwd / f"killed_at_{after_step}.log"
    with output.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            steps = [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.is_file() else []
            if steps and max(steps) >= after_step:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return max(steps)
            if proc.poll() is not None:
                raise AssertionError(f"{command} ended (rc {proc.returncode}) before step {after_step}: "
                                     f"{output.read_text()[-3000:]}")
            time.sleep(0.005)
        raise AssertionError(f"no step {after_step} in {log} after {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
