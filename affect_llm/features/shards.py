"""Append-only shard files of the feature cache: one writer per process, an index beside each shard.

A writer process appends entries to its own data file and, after each entry, one fixed-size
record to the index file beside it. Nothing is ever rewritten, so writers on several machines of
a cluster file system never touch one file together; readers list the index files and merge them.

    <root>/shards/<writer>.<n>.data    entry bytes, appended
    <root>/shards/<writer>.<n>.index   80-byte records: key, offset, length, sha256 of the entry
    <root>/shards/<writer>.bad         (shard, offset) records of entries found corrupt

An index record is written after its entry's bytes, so a crash leaves at worst an entry without
a record (never read) or a torn last record (ignored: the file is read in whole records). An entry
cut short or damaged later fails its sha256 when read and is reported bad by the reader.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# key: sha256 digest of the cache key; sha: sha256 of the entry bytes.
RECORD = np.dtype([("key", "S32"), ("offset", "<u8"), ("length", "<u8"), ("sha", "u1", (32,))])
BAD_RECORD = np.dtype([("shard", "S128"), ("offset", "<u8")])
SHARD_FOLDER = "shards"
DATA_SUFFIX = ".data"
INDEX_SUFFIX = ".index"
BAD_SUFFIX = ".bad"
MAX_SHARD_BYTES = 2 << 30  # a new data file past 2 GiB keeps single files copyable


@dataclass(frozen=True)
class Location:
    """Where one entry lives: data file, byte range and the sha256 its bytes must have."""

    shard: str
    offset: int
    length: int
    sha: bytes


def record_bytes(key: bytes, offset: int, length: int, sha: bytes) -> bytes:
    record = np.zeros(1, dtype=RECORD)
    record["key"], record["offset"], record["length"] = key, offset, length
    record["sha"][0] = np.frombuffer(sha, dtype=np.uint8)
    return record.tobytes()


def read_records(path: Path, dtype: np.dtype = RECORD) -> np.ndarray:
    """The whole records of an index file; a torn last record (a crash mid-write) is left out."""
    data = path.read_bytes()
    whole = len(data) - len(data) % dtype.itemsize
    return np.frombuffer(data[:whole], dtype=dtype)


class ShardWriter:
    """Appends entries to this process's own shard files (created on the first entry).

    Args:
        folder: The shard folder.
        max_bytes: Start a new data file once the current one passes this size.
    """

    def __init__(self, folder: Path, max_bytes: int = MAX_SHARD_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        # Host and pid name the writer for a person reading the folder; the random part keeps two
        # writers apart when a pid is reused on another machine or after a restart.
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.pid = os.getpid()
        self.number = -1
        self.data = self.index = None
        self.size = 0

    def _open_next(self) -> None:
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.number += 1
        stem = self.folder / f"{self.name}.{self.number}"
        self.data = open(f"{stem}{DATA_SUFFIX}", "ab")  # noqa: SIM115 - held open across appends
        self.index = open(f"{stem}{INDEX_SUFFIX}", "ab")  # noqa: SIM115
        self.size = 0

    @property
    def shard(self) -> str:
        return f"{self.name}.{self.number}{DATA_SUFFIX}"

    def append(self, key: bytes, blob: bytes, sha: bytes) -> Location:
        """Write one entry, then its index record; returns where it went."""
        if self.data is None or self.size >= self.max_bytes:
            self._open_next()
        offset = self.size
        self.data.write(blob)
        self.data.flush()
        self.size += len(blob)
        self.index.write(record_bytes(key, offset, len(blob), sha))
        self.index.flush()
        return Location(self.shard, offset, len(blob), sha)

    def mark_bad(self, location: Location) -> None:
        """Record a corrupt location so that no later reader returns it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = np.zeros(1, dtype=BAD_RECORD)
        record["shard"], record["offset"] = location.shard.encode(), location.offset
        with open(self.folder / f"{self.name}{BAD_SUFFIX}", "ab") as handle:
            handle.write(record.tobytes())

    def sync(self) -> None:
        """fsync data and index, so readers on other machines of a cluster file system see them."""
        for handle in (self.data, self.index):
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in (self.data, self.index):
            if handle is not None:
                handle.close()
        self.data = self.index = None


class ShardIndex:
    """Every entry of every shard, sorted by key: lookups by binary search over numpy arrays.

    Arrays, not a dict of Python objects: the index of 10^6 entries is 90 MB that forked loader
    workers share instead of copying page by page as reference counts change.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shards: list[str] = []
        self.records = np.zeros(0, dtype=RECORD)
        self.shard_ids = np.zeros(0, dtype=np.uint32)
        self.data_bytes = 0

    def load(self) -> None:
        """Read every index file; entries past the end of their data file (a copy cut short) are left out."""
        bad = self._bad_locations()
        parts, ids, shards, total = [], [], [], 0
        for index_path in sorted(self.folder.glob(f"*{INDEX_SUFFIX}")):
            shard = index_path.name[: -len(INDEX_SUFFIX)] + DATA_SUFFIX
            try:
                records = read_records(index_path)
                size = (self.folder / shard).stat().st_size
            except FileNotFoundError:
                continue
            keep = records["offset"] + records["length"] <= size
            if bad:
                keep &= np.array([(shard, int(o)) not in bad for o in records["offset"]], dtype=bool)
            parts.append(records[keep])
            ids.append(np.full(int(keep.sum()), len(shards), dtype=np.uint32))
            shards.append(shard)
            total += size
        records = np.concatenate(parts) if parts else np.zeros(0, dtype=RECORD)
        shard_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.uint32)
        order = np.argsort(records["key"], kind="stable")
        self.records, self.shard_ids, self.shards, self.data_bytes = records[order], shard_ids[order], shards, total

    def _bad_locations(self) -> set[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        for path in self.folder.glob(f"*{BAD_SUFFIX}"):
            found.update((r["shard"].decode(), int(r["offset"])) for r in read_records(path, BAD_RECORD))
        return found

    def find(self, key: bytes) -> list[Location]:
        """Every recorded location of ``key`` (usually one)."""
        keys = self.records["key"]
        start = int(np.searchsorted(keys, key, side="left"))
        stop = int(np.searchsorted(keys, key, side="right"))
        return [Location(self.shards[self.shard_ids[i]], int(self.records["offset"][i]),
                         int(self.records["length"][i]), self.records["sha"][i].tobytes())
                for i in range(start, stop)]

    def __len__(self) -> int:
        return len(self.records)
