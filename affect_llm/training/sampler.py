"""Batch samplers for the training and validation loaders: the seeded schedule, resumable, one share per rank.

Process ``r`` of ``W`` takes samples ``r, r + W, ...`` of each global micro-batch, so 1 process at
batch ``B`` and 2 at ``B / 2`` train on the same samples in the same order and reach the same
losses. A resumed stage starts the sampler at its step: the schedule is replayed from the seed up
to there, nothing about it is stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from itertools import islice

from affect_llm.training.schedule import Sample


class ScheduleSampler:
    """This process's share of global micro-batches ``start .. stop - 1`` of a schedule.

    Args:
        schedule: Makes the schedule's endless iterator afresh (the same draws each time).
        start: First micro-batch (``step * grad_accum`` on resume).
        stop: One past the last micro-batch.
        rank: This process's index.
        world: Number of processes.
    """

    def __init__(self, schedule: Callable[[], Iterator[list[Sample]]], start: int, stop: int, rank: int = 0,
                 world: int = 1) -> None:
        if not 0 <= start <= stop:
            raise ValueError(f"ScheduleSampler: need 0 <= start <= stop, got start={start}, stop={stop}")
        self.schedule, self.start, self.stop, self.rank, self.world = schedule, start, stop, rank, world

    def __iter__(self) -> Iterator[list[Sample]]:
        for batch in islice(self.schedule(), self.start, self.stop):
            yield batch[self.rank :: self.world]

    def __len__(self) -> int:
        return self.stop - self.start


def validation_batches(samples: list[Sample], batch_size: int, rank: int = 0, world: int = 1) -> list[list[Sample]]:
    """This process's validation batches; every process gets the same number of batches.

    Sharded and replicated models run collectives in each forward (FSDP gathers weights, DDP syncs
    buffers), so a process with fewer rows must still run as many forwards: its share is padded
    with uncounted copies of the first sample.
    """
    if not samples:
        return []
    per_rank = math.ceil(len(samples) / world)
    mine = samples[rank::world]
    padding = Sample(samples[0].dataset, samples[0].index, samples[0].task, counted=False)
    mine += [padding] * (per_rank - len(mine))
    return [mine[i : i + batch_size] for i in range(0, per_rank, batch_size)]
