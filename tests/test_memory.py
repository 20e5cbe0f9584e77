"""The process's memory figures the training log records, and handing freed heap back (Linux, glibc)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from affect_llm.memory import peak_resident_mib, release_free_memory


def _resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_peak_is_at_least_what_is_resident_now() -> None:
    held = torch.ones(32 * 1024 * 1024 // 4)  # 32 MiB, touched
    assert peak_resident_mib() >= 32
    del held


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc: Linux only")
def test_freed_small_buffers_are_handed_back() -> None:
    # Buffers below glibc's mmap threshold come from the heap; a small live buffer after each keeps
    # the heap's top in use, so freeing them keeps their pages resident until they are handed back.
    pieces, pins = [], []
    for _ in range(4096):  # 4096 x 64 KiB = 256 MiB
        pieces.append(torch.ones(16 * 1024))
        pins.append(torch.ones(16))
    del pieces
    before = _resident_mib()
    assert release_free_memory()
    assert _resident_mib() < before - 100
    assert len(pins) == 4096
