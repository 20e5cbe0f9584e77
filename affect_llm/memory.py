"""This process's resident memory, as the training log and the benchmarks record it.

The figure is the high-water mark since the process started (``VmHWM`` on Linux, ``ru_maxrss``
elsewhere), the same peak ``/usr/bin/time -v`` reports for a command; recorded per step, it shows
which step set a run's peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path

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


def release_free_memory() -> bool:
    """Collect garbage and hand the allocator's free heap pages back to the system (glibc only).

    glibc keeps memory a process freed for its next allocations. Between phases that allocate in
    different sizes (featurization, then a stage's steps; one stage, then the next) the kept pages
    are seldom reused and the process's resident memory adds the two phases' peaks. Returns False
    where the C library has no ``malloc_trim``.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
