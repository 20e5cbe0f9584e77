"""The sample order of a stage, fixed up front from the seed so a resumed run sees the same data.

A stage's schedule is the list of global micro-batches; process ``r`` of ``W`` takes every
``W``-th sample of each global batch, so 1 and 2 processes at the same global batch see the same
samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from affect_llm.data.manifest import ManifestRow
from affect_llm.training.config import StageConfig


@dataclass(frozen=True)
class Sample:
    dataset: str
    index: int
    task: str


def _row_stream(rows: list[ManifestRow], order: str, rng: np.random.Generator):
    """Endless row indices: shuffled epochs, the first one sorted by difficulty for ``easy_to_hard``."""
    epoch = 0
    while True:
        permutation = rng.permutation(len(rows))
        if order == "easy_to_hard" and epoch == 0:
            difficulty = np.array([float(rows[i].extra.get("difficulty", 0.0)) for i in permutation])
            permutation = permutation[np.argsort(difficulty, kind="stable")]
        yield from permutation.tolist()
        epoch += 1


def stage_num_steps(stage: StageConfig, num_rows: int, global_batch: int) -> int:
    if stage.steps is not None:
        return stage.steps
    return max(1, math.ceil(stage.epochs * num_rows / global_batch))


def build_schedule(
    stage: StageConfig,
    rows_by_dataset: dict[str, list[ManifestRow]],
    supports: Callable[[ManifestRow, str], bool],
    global_batch: int,
    num_micro_batches: int,
    seed: int,
) -> list[list[Sample]]:
    """``num_micro_batches`` global micro-batches of ``global_batch`` samples each.

    Args:
        supports: Whether a row can serve a task (has the labels / explanation it needs).
    """
    rng = np.random.default_rng(seed)
    names = [n for n in stage.datasets if rows_by_dataset.get(n)]
    if not names:
        raise ValueError(f"stage {stage.name!r}: none of its datasets {list(stage.datasets)} has training rows")
    tasks = list(stage.tasks)
    for name in names:
        # A dataset none of whose rows serves a task would make the sampling loop below spin forever.
        if not any(supports(row, task) for row in rows_by_dataset[name] for task in tasks):
            raise ValueError(f"stage {stage.name!r}: no training row of dataset {name!r} can serve its tasks {tasks}")
    weights = np.array([stage.datasets[n] for n in names], dtype=float)
    streams = {n: _row_stream(rows_by_dataset[n], stage.order, rng) for n in names}
    task_weights = np.array([stage.tasks[t] for t in tasks], dtype=float)
    schedule = []
    for _ in range(num_micro_batches):
        batch = []
        while len(batch) < global_batch:
            name = names[rng.choice(len(names), p=weights / weights.sum())]
            index = next(streams[name])
            row = rows_by_dataset[name][index]
            usable = [i for i, t in enumerate(tasks) if supports(row, t)]
            if not usable:
                continue
            probs = task_weights[usable] / task_weights[usable].sum()
            batch.append(Sample(name, index, tasks[usable[rng.choice(len(usable), p=probs)]]))
        schedule.append(batch)
    return schedule
