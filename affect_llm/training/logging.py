"""Run visibility: a progress bar with ETA, loss, tokens/s and samples/s; TensorBoard (and wandb) scalars."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from affect_llm.fileio import atomic_write_bytes, cut_torn_tail
from affect_llm.memory import peak_resident_mib

logger = logging.getLogger("affect_llm.training")


def _logged_after(line: bytes, stage: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("stage") == stage and int(record.get("step", 0)) > step


class RunLogger:
    """Progress bar on the main process, TensorBoard events under ``<run_dir>/tensorboard``, and a JSONL log."""

    def __init__(self, run_dir: Path, is_main: bool, settings: Any) -> None:
        self.is_main = is_main
        self.settings = settings
        self.stage = ""
        self.bar = None
        self.writer = None
        self.wandb = None
        self.global_step = 0
        if not is_main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = run_dir / "log.jsonl"
        if self.jsonl_path.exists():
            cut_torn_tail(self.jsonl_path)  # a kill mid-line
        self.jsonl = self.jsonl_path.open("a")
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        if settings.wandb:
            import wandb  # optional dependency, only when asked for

            self.wandb = wandb.init(project="affect-llm", dir=str(run_dir))

    def start_stage(self, name: str, total: int, initial: int) -> None:
        self.stage = name
        if self.is_main:
            self._forget_steps_after(name, initial)
            from tqdm.auto import tqdm

            # Redirected to a file (a cluster job, a CI log), a bar redrawn every step floods it.
            interactive = sys.stderr.isatty()
            self.bar = tqdm(total=total, initial=initial, desc=f"stage {name}", dynamic_ncols=True,
                            mininterval=0.1 if interactive else 30.0)

    def _forget_steps_after(self, stage: str, step: int) -> None:
        """Drop the log lines of ``stage`` after ``step``, where a resumed stage starts: the run that
        was killed logged them, and this one logs them again. Each step is then in the log once."""
        lines = self.jsonl_path.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if not _logged_after(line, stage, step)]
        if len(kept) == len(lines):
            return
        self.jsonl.close()
        atomic_write_bytes(self.jsonl_path, b"".join(kept))
        self.jsonl = self.jsonl_path.open("a")

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float, samples_per_s: float,
             extra: dict[str, float] | None = None) -> None:
        """One step's line; ``extra`` adds named figures (a reinforcement stage's rewards) to it."""
        if not self.is_main:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}", samples_s=f"{samples_per_s:.1f}",
                             refresh=False)
        # The process's peak so far: the step where it rises is the one that set the run's peak.
        record = {"stage": self.stage, "step": step, "loss": loss, "lr": lr,
                  "tokens_per_s": tokens_per_s, "samples_per_s": samples_per_s,
                  "peak_resident_mib": round(peak_resident_mib()), **(extra or {})}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if step % max(1, self.settings.log_every) == 0:
            for key in ("loss", "lr", "tokens_per_s", "samples_per_s"):
                self.scalar(f"train/{key}", record[key], step)
            for key, value in (extra or {}).items():
                self.scalar(f"train/{key}", value, step)

    def scalar(self, name: str, value: float | None, step: int) -> None:
        if not self.is_main or value is None:
            return
        tag = f"{self.stage}/{name}"
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log({tag: value}, step=step)

    def end_stage(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.end_stage()
        if self.is_main:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
            if self.wandb is not None:
                self.wandb.finish()
