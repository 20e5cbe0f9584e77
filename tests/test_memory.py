"""The process's memory figures the training log records, and handing freed heap back (Linux, glibc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from affect_llm.memory import (
    ONEDNN_PRIMITIVE_CACHE_CAPACITY,
    bound_onednn_primitive_cache,
    peak_resident_mib,
)


def test_the_peak_is_at_least_what_is_resident_now() -> None:
    held = torch.ones(32 * 1024 * 1024 // 4)  # 32 MiB, touched
    assert peak_resident_mib() >= 32
    del held


_HAND_BACK = """
from pathlib import Path
import torch
from affect_llm.memory import release_free_memory

def resident_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

pieces, pins = [], []
for _ in range(4096):  # 4096 x 64 KiB = 256 MiB
    pieces.append(torch.ones(16 * 1024))
    pins.append(torch.ones(16))
del pieces
before = resident_mib()
assert release_free_memory()
print(before, resident_mib(), len(pins))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc: Linux only")
def test_freed_small_buffers_are_handed_back() -> None:
    # Buffers below glibc's mmap threshold come from the heap; a small live buffer after each keeps
    # the heap's top in use, so freeing them keeps their pages resident until they are handed back.
    # A fresh process: in the test session's own heap, what earlier tests left decides where the
    # buffers land and how much of them a trim can reach.
    out = subprocess.run([sys.executable, "-c", _HAND_BACK], capture_output=True, text=True, check=True).stdout
    before, after, pinned = (float(x) for x in out.split())
    assert after < before - 100
    assert pinned == 4096


def test_the_cli_bounds_onednn_primitives_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    bound_onednn_primitive_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    bound_onednn_primitive_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
    # The console script sets it before a command runs, so its worker processes inherit it.
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    code = ("import os, subprocess, sys\nfrom affect_llm.cli.main import main\n"
            "assert main(['models', 'list']) == 0\n"
            "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"ONEDNN_PRIMITIVE_CACHE_CAPACITY\"])'],"
            " capture_output=True, text=True, check=True).stdout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == str(ONEDNN_PRIMITIVE_CACHE_CAPACITY)
