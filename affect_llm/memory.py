"""This process's resident memory, as the training log and the benchmarks record it.

The figure is the high-water mark since the process started (``VmHWM`` on Linux, ``ru_maxrss``
elsewhere), the same peak ``/usr/bin/time -v`` reports for a command; recorded per step, it shows
which step set a run's peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")


def peak_resident_mib() -> float:
    """Peak resident memory of this process in MiB (since start, or since :func:`reset_peak_resident`)."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_resident() -> bool:
    """Reset the high-water mark (Linux); False where that is not possible.

    For benchmarks that measure one step at a time. A command's own peak must not be reset: the
    kernel reports the reset mark to ``/usr/bin/time`` and to a parent's ``RUSAGE_CHILDREN``.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def trim_heap() -> bool:
    """Hand the allocator's free heap pages back to the system (glibc ``malloc_trim``).

    glibc keeps memory a process freed for its next allocations. When the sizes change from one
    allocation round to the next (training batches of other lengths; featurization, then a stage's
    steps) the kept pages are seldom reused whole and the resident memory creeps up: in 100 align
    steps of the embedded default, from 3.1 to 3.9 GiB. Trimming releases the free pages inside
    the heap too. Returns False where the C library has no ``malloc_trim``.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


# Enough for every matmul shape of one training step or one decoding step of a 7B model (a few
# dozen: the layers share theirs), where oneDNN's default keeps 1024.
ONEDNN_PRIMITIVE_CACHE_CAPACITY = 64


def bound_onednn_primitive_cache(capacity: int = ONEDNN_PRIMITIVE_CACHE_CAPACITY) -> None:
    """Keep fewer compiled oneDNN primitives than its default 1024, unless the user set a number.

    oneDNN (torch's CPU matmuls under bf16 autocast) keeps a compiled primitive per matmul shape,
    and every training batch of another length brings new shapes, so the cache only grows: on a CPU
    with AMX, 40 align steps of the embedded default peaked at 3.81 GB with the default, 3.47 GB
    with 64 (3.24 GB with 8, but a quarter slower: the primitives of one step no longer fit), at
    the same step time and the same losses. oneDNN reads the variable when it first builds a
    primitive, so this must run before the first matmul; worker processes inherit it.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


def release_free_memory() -> bool:
    """Collect garbage, then :func:`trim_heap`: between phases of a run."""
    gc.collect()
    return trim_heap()


@lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)
