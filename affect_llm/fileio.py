"""Crash-safe file writes shared by the manifest writer, the feature cache, reports and batch outputs.

- :func:`atomic_write_bytes`: whole files, replaced at once;
- :func:`share_written_weights`: weight files readable as the umask allows, as every other file is;
- :func:`append_whole` and :func:`cut_torn_tail`: append-only JSONL outputs that never keep a torn line;
- :class:`OutputLock`: one writer per output file or run folder, also on cluster file systems.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers see the old file or the new one, never a torn one, even with several processes
    writing the same path at once.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600: give it the mode the file had, or the one open() would give,
        # so that a teammate can still read a report or an output rewritten in place.
        os.fchmod(fd, _existing_mode(path) or new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file: 0o666 less the process umask."""
    try:  # Linux states the umask here; reading it does not change it for other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def os_error_of(error: BaseException, filename: str | Path | None = None) -> OSError | None:
    """The OS error inside an error that is not an ``OSError``: safetensors reports a full disk as its
    own ``SafetensorError`` ("... No space left on device (os error 28)"), with no file named."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"\(os error (\d+)\)", str(error))
    if type(error).__name__ != "SafetensorError" or found is None:
        return None
    number = int(found[1])
    return OSError(number, os.strerror(number), None if filename is None else str(filename))


@contextlib.contextmanager
def os_errors_as_oserror(folder: str | Path) -> Iterator[None]:
    """Re-raise an OS error hidden in another type (:func:`os_error_of`) as an ``OSError`` naming
    ``folder``, the place being written, so that a full disk is reported as one."""
    try:
        yield
    except Exception as error:
        os_error = os_error_of(error, folder)
        if os_error is None or os_error is error:
            raise
        raise os_error from error


def _existing_mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return None


def share_written_weights(folder: Path) -> None:
    """Give the ``*.safetensors`` files just written under ``folder`` the mode any other file gets.

    safetensors >= 0.8 writes through a temporary file created 0600 and renames it into place
    (safetensors issue #782), so a checkpoint or model cache would be readable by its writer only:
    a teammate sharing the run folder or ``AFFECT_LLM_MODELS`` on a cluster could not load it.
    """
    mode = new_file_mode()
    for weights in Path(folder).rglob("*.safetensors"):
        if weights.is_file() and weights.stat().st_mode & 0o777 != mode:
            weights.chmod(mode)


def swap_folder_into_place(tmp: Path, target: Path, marker: str) -> None:
    """Replace ``target`` by the complete folder ``tmp`` (its ``marker`` file written last): ``target``
    is renamed to ``<target>.old``, ``tmp`` to ``target``, then the old one is removed.

    A kill between the two renames leaves no ``target``; :func:`finish_folder_swap` completes it,
    and a reader that completed it first (with this very folder) is no error here.
    """
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except FileNotFoundError:
        if not (target / marker).is_file():
            raise
    shutil.rmtree(old, ignore_errors=True)


def finish_folder_swap(target: Path, marker: str, keep_old: bool = False) -> None:
    """Complete a :func:`swap_folder_into_place` that a kill cut between its two renames: the new
    folder (``<target>.tmp``) when its ``marker`` is there, else the old one (``<target>.old``) is put
    back. Several processes may race here; a folder that cannot be written is left as it is (reading
    it then says what is missing). ``keep_old`` leaves ``<target>.old`` for the next swap to remove."""
    tmp, old = (target.with_name(target.name + suffix) for suffix in (".tmp", ".old"))
    try:
        if not target.exists():
            for candidate in (tmp, old):
                if (candidate / marker).is_file():
                    os.replace(candidate, target)
                    break
        if target.exists() and old.is_dir() and not keep_old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return


def append_whole(fd: int, data: bytes, path: str | Path | None = None,
                 kept: Callable[[], None] | None = None) -> None:
    """Append ``data`` to an open file in full or not at all, then fsync.

    A write that fails part-way (disk full, file size limit, a signal) is cut back to where it
    started, so a reader never finds a torn line, and the error is raised.

    Args:
        fd: A descriptor opened for writing; this process must be its only writer (see
            :class:`OutputLock`).
        data: The bytes to add at the end.
        path: The file's name, for the error (``os.write`` errors name none).
        kept: Called once ``data`` stays in the file: after the fsync, or before the error of a
            signal that landed after the last byte was written (the caller counts what it wrote).
    """
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            # os.write may write part of the buffer (a size limit reached): go on until it raises.
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException as error:
        # A signal after the last byte was written (Ctrl-C, SIGTERM during the fsync) leaves whole lines,
        # which are kept: they are finished work. A part written, or a disk that refused the fsync, is cut.
        if view or isinstance(error, OSError):
            # Shrinking a file needs no free space: this works on a full disk.
            os.ftruncate(fd, start)
        elif kept is not None:
            kept()
        if isinstance(error, OSError) and error.filename is None and path is not None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    if kept is not None:
        kept()


def parse_yaml(text: str | bytes, where: str | Path) -> Any:
    """YAML text parsed; a syntax error is a ValueError naming ``where``, the line and the column
    (PyYAML's own message names only ``<byte string>``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"{where}: not valid YAML{at}: {problem}") from error


def cut_torn_tail(path: Path) -> int:
    """Remove an unfinished last line (a crash mid-write) in place; returns the bytes removed.

    In place, never by rewriting the file: on a full disk a rewrite would lose what it rewrites.
    """
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb") as handle:
        # Walk back from the end in blocks to the last newline.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
    os.truncate(path, keep)
    return size - keep


class LockHeldError(RuntimeError):
    """Another process holds the lock of an output.

    Attributes:
        lock_path: The lock file.
        holder: What the lock file says (``host``, ``pid``, ``since``, ``command``), or {} when unreadable.
    """

    def __init__(self, target: Path, lock_path: Path, holder: dict[str, Any]) -> None:
        self.lock_path = lock_path
        self.holder = holder
        who = (f"process {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')}: "
               f"{holder.get('command', '?')})") if holder else "a process that has not written its name yet"
        super().__init__(f"{target} is being written by {who}; wait for it to finish, or, if that process is "
                         f"gone, delete {lock_path} and run again")


# Why a lock file created with O_CREAT|O_EXCL and not fcntl/flock: requeued shards of one job write to
# the same output from different nodes of a cluster, and on NFS and Lustre POSIX locks depend on the
# mount (Lustre's "flock"/"localflock" options, NFS's lock daemon) and may silently lock only on the
# local node. Exclusive create is atomic on local disks, NFSv3+ and Lustre alike. Its weakness is a
# holder that dies without removing the file: the lock is broken only when the holder ran on this
# host and its pid is gone; a holder on another host is never guessed dead, the message says what to do.
class OutputLock:
    """Exclusive right to write ``target``, held as ``<target>.lock`` (or ``lock_path``).

    The lock file records the holder: host, pid, start time, command and, under SLURM, the job id.
    Use as a context manager.

    Args:
        target: The output file or folder being written.
        lock_path: Where the lock file lives (default ``<target>.lock`` beside it).

    Raises:
        LockHeldError: On entering, when another live process holds it.
    """

    # An empty lock file (holder died between creating and writing it) older than this is stale.
    EMPTY_STALE_SECONDS = 60.0

    def __init__(self, target: str | Path, lock_path: str | Path | None = None) -> None:
        self.target = Path(target)
        self.path = Path(lock_path) if lock_path is not None else self.target.with_name(self.target.name + ".lock")
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held = False

    def acquire(self) -> None:
        """Take the lock, breaking it only when its holder is provably dead.

        Raises:
            LockHeldError: When another process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is not None and not self._stale(holder):
                    raise LockHeldError(self.target, self.path, holder) from None
                self._break(holder)
                continue
            record = {**self.me, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300]}
            if os.environ.get("SLURM_JOB_ID"):
                # A lock SIGKILL left on a cluster names another node: the job id lets a later task ask
                # squeue whether its writer still runs (training/slurm/explain_array.sbatch).
                record["slurm_job"] = os.environ["SLURM_JOB_ID"]
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.held = True
            return
        raise LockHeldError(self.target, self.path, read_lock(self.path) or {})

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder:
            age = time.time() - _mtime(self.path)
            return age > self.EMPTY_STALE_SECONDS
        if holder.get("host") != self.me["host"] or not isinstance(holder.get("pid"), int):
            return False
        return holder["pid"] != self.me["pid"] and not _alive(holder["pid"])

    def _break(self, holder: dict[str, Any] | None) -> None:
        """Remove a stale lock; a rename first, so that of two processes breaking it only one wins."""
        aside = self.path.with_name(f"{self.path.name}.stale.{self.me['pid']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process broke it first
        if read_lock(aside) != holder:
            # A new holder took the lock between our read and the rename: give it back.
            os.rename(aside, self.path)
            raise LockHeldError(self.target, self.path, read_lock(self.path) or {})
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file when it is still ours."""
        if self.held and (read_lock(self.path) or {}).get("pid") == self.me["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder a lock file names; {} when it is empty or unreadable, None when it is gone."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True
