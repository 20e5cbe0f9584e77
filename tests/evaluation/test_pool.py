from __future__ import annotations

import threading
import time

import pytest

from affect_llm.evaluation.judge.pool import run_ordered


def test_results_come_back_in_input_order_with_bounded_concurrency():
    lock, running, peak = threading.Lock(), [0], [0]

    def slow(item: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (5 - item % 5))  # later items finish first
        with lock:
            running[0] -= 1
        return item * item

    seen: list[tuple[int, int]] = []
    run_ordered(slow, list(range(12)), 4, lambda i, r: seen.append((i, r)))
    assert seen == [(i, i * i) for i in range(12)]
    assert 1 < peak[0] <= 4


def test_first_error_in_input_order_is_raised():
    def fail_on_three(item: int) -> int:
        if item == 3:
            raise RuntimeError("item 3")
        return item

    seen: list[int] = []
    with pytest.raises(RuntimeError, match="item 3"):
        run_ordered(fail_on_three, list(range(8)), 3, lambda i, r: seen.append(r))
    assert seen == [0, 1, 2]


def test_rejects_zero_in_flight():
    with pytest.raises(ValueError, match="max_in_flight"):
        run_ordered(lambda x: x, [1], 0, lambda i, r: None)
