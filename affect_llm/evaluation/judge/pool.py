"""Run blocking calls on a bounded number of threads and hand their results back in input order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def run_ordered(
    fn: Callable[[Item], Result],
    items: Sequence[Item],
    max_in_flight: int,
    on_result: Callable[[int, Result], None],
) -> None:
    """Call ``fn`` on every item with at most ``max_in_flight`` calls running at once.

    ``on_result(index, result)`` runs on the calling thread in input order, as soon as every
    earlier item has finished: whatever it writes (a cache file) comes out in the same order as
    a one-at-a-time run would write it, and a crash loses only results not yet handed back.

    Raises:
        ValueError: ``max_in_flight`` is below 1.
        Exception: The first exception raised by ``fn``, in input order; calls not yet started
            are cancelled.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if max_in_flight == 1 or len(items) <= 1:
        for index, item in enumerate(items):
            on_result(index, fn(item))
        return
    pool = ThreadPoolExecutor(max_workers=min(max_in_flight, len(items)), thread_name_prefix="judge")
    try:
        futures = [pool.submit(fn, item) for item in items]
        for index, future in enumerate(futures):
            on_result(index, future.result())
    finally:
        # On an error, calls still queued are dropped; running ones finish (they are bounded by timeouts).
        pool.shutdown(wait=True, cancel_futures=True)
