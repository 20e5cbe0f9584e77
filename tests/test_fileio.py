"""Crash-safe writes: whole-or-nothing appends, torn tails cut in place, one writer per output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affect_llm.fileio import (
    LockHeldError,
    OutputLock,
    atomic_write_bytes,
    cut_torn_tail,
    new_file_mode,
    read_lock,
    share_written_weights,
)

HOLD = ("import sys, time\nfrom affect_llm.fileio import OutputLock\n"
        "with OutputLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def _write_lock(path: Path, **holder: object) -> None:
    path.write_text(json.dumps(holder) + "\n")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_append_is_whole_or_nothing_when_the_file_size_limit_is_hit(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_bytes(b'{"id": 1}\n')
    # In a child: the limit and the ignored SIGXFSZ must not reach this test process.
    code = ("import os, resource, signal, sys\nfrom affect_llm.fileio import append_whole\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nresource.setrlimit(resource.RLIMIT_FSIZE, (40, 40))\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
            "try:\n    append_whole(fd, b'{\"id\": 2, \"text\": \"' + b'x' * 60 + b'\"}\\n', sys.argv[1])\n"
            "except OSError as e:\n    print(e.errno, e.filename)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["27", str(out)]  # EFBIG, the file named
    assert out.read_bytes() == b'{"id": 1}\n'


def test_lines_written_whole_are_kept_when_a_signal_lands_in_the_fsync(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM raised while the fsync runs (seen under load in `explain`): the rows are whole and stay;
    a disk that refuses the fsync still has them cut. The signal's timing is simulated: fsync raises."""
    import os

    from affect_llm import fileio

    out = tmp_path / "rows.jsonl"
    out.write_bytes(b'{"id": 1}\n')
    fd = os.open(out, os.O_WRONLY | os.O_APPEND)

    def interrupted(_fd: int) -> None:
        raise KeyboardInterrupt

    counted: list[bytes] = []  # what the caller counts as written (explain's run summary)
    monkeypatch.setattr(fileio.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fileio.append_whole(fd, b'{"id": 2}\n', kept=lambda: counted.append(b"2"))
    assert out.read_bytes() == b'{"id": 1}\n{"id": 2}\n' and counted == [b"2"]

    def refused(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fileio.os, "fsync", refused)
    with pytest.raises(OSError):
        fileio.append_whole(fd, b'{"id": 3}\n', out, kept=lambda: counted.append(b"3"))
    monkeypatch.undo()
    fileio.append_whole(fd, b'{"id": 4}\n', out, kept=lambda: counted.append(b"4"))
    os.close(fd)
    assert out.read_bytes() == b'{"id": 1}\n{"id": 2}\n{"id": 4}\n' and counted == [b"2", b"4"]


def test_a_torn_last_line_is_cut_in_place(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "te')
    inode = out.stat().st_ino
    assert cut_torn_tail(out) == len(b'{"id": 3, "te')
    assert out.read_bytes() == b'{"id": 1}\n{"id": 2}\n' and out.stat().st_ino == inode
    assert cut_torn_tail(out) == 0
    out.write_bytes(b"no newline at all")
    cut_torn_tail(out)
    assert out.read_bytes() == b""


def test_a_second_process_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError) as info:
            OutputLock(target).acquire()
        message = str(info.value)
        assert f"process {holder.pid} on host {socket.gethostname()}" in message
        assert f"delete {target}.lock" in message
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait()


def test_the_lock_is_released_and_can_be_taken_again(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with OutputLock(target) as lock:
        assert read_lock(lock.path)["pid"] == os.getpid()
        with pytest.raises(LockHeldError):  # not re-entrant: a second writer in one process is refused too
            OutputLock(target).acquire()
    assert not (tmp_path / "out.jsonl.lock").exists()
    with OutputLock(target):
        pass


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    _write_lock(tmp_path / "out.jsonl.lock", host=socket.gethostname(), pid=_dead_pid(), since="earlier")
    with OutputLock(target) as lock:
        assert read_lock(lock.path)["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_held_on_another_host_is_never_guessed_dead(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    _write_lock(tmp_path / "out.jsonl.lock", host="node-17.cluster", pid=_dead_pid(), since="earlier")
    with pytest.raises(LockHeldError, match="on host node-17.cluster"):
        OutputLock(target).acquire()


def test_an_empty_lock_file_is_held_while_fresh_and_stale_when_old(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    lock_file = tmp_path / "out.jsonl.lock"
    lock_file.write_text("")
    with pytest.raises(LockHeldError, match="has not written its name yet"):
        OutputLock(target).acquire()
    old = time.time() - 2 * OutputLock.EMPTY_STALE_SECONDS
    os.utime(lock_file, (old, old))
    with OutputLock(target):
        assert read_lock(lock_file)["host"] == socket.gethostname()


def test_a_rewritten_file_keeps_its_mode_and_a_new_one_gets_the_umasks(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        fresh = atomic_write_bytes(tmp_path / "fresh.json", b"{}")
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o604)
        atomic_write_bytes(kept, b"new")
        assert new_file_mode() == 0o640
    finally:
        os.umask(previous)
    assert fresh.stat().st_mode & 0o777 == 0o640
    assert kept.read_text() == "new" and kept.stat().st_mode & 0o777 == 0o604


def test_weights_written_private_are_given_the_umasks_mode(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "sub").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "sub" / "w.safetensors"))
    previous = os.umask(0o022)
    try:
        share_written_weights(tmp_path)
    finally:
        os.umask(previous)
    assert (tmp_path / "sub" / "w.safetensors").stat().st_mode & 0o777 == 0o644
