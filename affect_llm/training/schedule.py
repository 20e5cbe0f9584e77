"""The sample order of a stage, fixed up front from the seed so a resumed run sees the same data.

A stage's schedule is the sequence of global micro-batches; process ``r`` of ``W`` takes every
``W``-th sample of each global batch, so 1 and 2 processes at the same global batch see the same
samples. The sequence is generated lazily from the seed (:func:`iter_schedule`): a resumed run
replays the draws up to its step instead of storing millions of samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from affect_llm.data.manifest import ManifestRow
from affect_llm.training.config import StageConfig


@dataclass(frozen=True)
class Sample:
    """One training item: a row of a dataset's list and the task it answers.

    Attributes:
        counted: False for a padding item (validation ranks run equal batch counts): its loss is left out.
    """

    dataset: str
    index: int
    task: str
    counted: bool = True


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


def validation_samples(
    stage: StageConfig,
    rows_by_dataset: dict[str, list[ManifestRow]],
    supports: Callable[[ManifestRow, str], bool],
    limit: int,
) -> list[Sample]:
    """Up to ``limit`` validation samples: each row once, with the stage's heaviest task it can serve.

    Under the cap the samples are spread evenly over every dataset's rows, in their order: the first
    ``limit`` would leave out the last datasets and, in a manifest sorted by label (the Polish set's
    speaker m4: 30 angry, then fearful, then neutral), all but the first labels.
    """
    tasks = sorted(stage.tasks, key=lambda t: -stage.tasks[t])
    samples = []
    for name in stage.datasets:
        for index, row in enumerate(rows_by_dataset[name]):
            task = next((t for t in tasks if supports(row, t)), None)
            if task is not None:
                samples.append(Sample(name, index, task))
    if len(samples) <= limit:
        return samples
    return [samples[i] for i in sorted({round(k * (len(samples) - 1) / max(limit - 1, 1)) for k in range(limit)})]


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
    """The first ``num_micro_batches`` global micro-batches of :func:`iter_schedule`, as a list."""
    return list(islice(iter_schedule(stage, rows_by_dataset, supports, global_batch, seed), num_micro_batches))


def iter_schedule(
    stage: StageConfig,
    rows_by_dataset: dict[str, list[ManifestRow]],
    supports: Callable[[ManifestRow, str], bool],
    global_batch: int,
    seed: int,
) -> Iterator[list[Sample]]:
    """Endless global micro-batches of ``global_batch`` samples each, drawn from ``seed``.

    Args:
        supports: Whether a row can serve a task (has the labels / explanation it needs).

    Raises:
        ValueError: A stage without training rows, or a dataset none of whose rows serves a task.
    """
    rng = np.random.default_rng(seed)
    names = [n for n in stage.datasets if rows_by_dataset.get(n)]
    if not names:
        raise ValueError(f"stage {stage.name!r}: none of its datasets {list(stage.datasets)} has training rows")
    tasks = list(stage.tasks)
    # Which tasks each row serves, asked once per row: replaying a long schedule on resume stays cheap.
    serves = {n: np.array([[supports(row, t) for t in tasks] for row in rows_by_dataset[n]], dtype=bool)
              for n in names}
    for name in names:
        # A dataset none of whose rows serves a task would make the sampling loop below spin forever.
        if not serves[name].any():
            raise ValueError(f"stage {stage.name!r}: no training row of dataset {name!r} can serve its tasks {tasks}")
    return _draw(stage, rows_by_dataset, names, tasks, serves, global_batch, rng)


def _draw(stage: StageConfig, rows_by_dataset: dict[str, list[ManifestRow]], names: list[str], tasks: list[str],
          serves: dict[str, np.ndarray], global_batch: int, rng: np.random.Generator) -> Iterator[list[Sample]]:
    weights = np.array([stage.datasets[n] for n in names], dtype=float)
    streams = {n: _row_stream(rows_by_dataset[n], stage.order, rng) for n in names}
    task_weights = np.array([stage.tasks[t] for t in tasks], dtype=float)
    while True:
        batch = []
        while len(batch) < global_batch:
            name = names[rng.choice(len(names), p=weights / weights.sum())]
            index = next(streams[name])
            usable = np.flatnonzero(serves[name][index]).tolist()
            if not usable:
                continue
            probs = task_weights[usable] / task_weights[usable].sum()
            batch.append(Sample(name, index, tasks[usable[rng.choice(len(usable), p=probs)]]))
        yield batch
