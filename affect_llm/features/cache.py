"""A disk cache of frozen-encoder features, packed into append-only shards.

The key is the sha256 of everything that determines the features: the sample id, the content
hash of its media, the encoder identity and the sampling settings (frames, fps, face size...).
Change any of them and the entry is simply not found.

An entry is a safetensors blob (its tensors plus a JSON ``meta``) appended to a shard file that
belongs to one writer process (:mod:`affect_llm.features.shards`): 10^5 clips make a few large
files instead of 10^5 small ones, and concurrent writers on a cluster file system never share a
file. Every entry's sha256 is checked when it is read; an entry that fails (a copy cut short, a
flipped bit) is recorded as bad, counted as corrupt and treated as a miss, so it is computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from affect_llm.features.shards import SHARD_FOLDER, Location, ShardIndex, ShardWriter

META_KEY = "affect_llm.meta"


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStats:
    """What a cache holds: distinct entries, bytes of its data files, number of data files."""

    entries: int
    bytes: int
    shards: int

    def describe(self) -> str:
        size = next((f"{self.bytes / scale:.2f} {unit}" for scale, unit in ((2**30, "GiB"), (2**20, "MiB"))
                     if self.bytes >= scale), f"{self.bytes / 2**10:.1f} KiB")
        return f"{self.entries} entries, {size} in {self.shards} shard files"


class FeatureCache:
    """Feature entries under ``root``; counts hits, misses and corrupt entries per instance.

    The index of every shard is read on first use and again on :meth:`refresh` (call it after other
    processes wrote, e.g. after a barrier). Entries this instance writes are visible to it at once.

    Args:
        root: Cache folder (created on first write).
        max_shard_bytes: Size past which a writer starts a new data file.
    """

    def __init__(self, root: str | Path, max_shard_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.folder = self.root / SHARD_FOLDER
        self.max_shard_bytes = max_shard_bytes
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        # The shard file of the last entry that failed its checksum (named in errors).
        self.last_corrupt_shard: Path | None = None
        self._index: ShardIndex | None = None
        self._own: dict[bytes, list[Location]] = {}  # written by this process since the last refresh
        self._writer: ShardWriter | None = None
        self._handles: dict[str, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into a spawned loader worker: open files and the writer stay with their process.
        state = dict(self.__dict__)
        state.update(_writer=None, _handles={})
        return state

    @staticmethod
    def key(sample_id: str, content_hash: str, encoder_id: str, settings: Mapping[str, Any]) -> str:
        """The entry key: sha256 of the canonical JSON of its inputs.

        Args:
            sample_id: The manifest row id.
            content_hash: Hash of the media bytes (:func:`affect_llm.hashing.file_sha256`).
            encoder_id: Encoder identity (name and weights fingerprint).
            settings: Sampling and preprocessing settings; must be JSON-serialisable.

        Raises:
            TypeError: If ``settings`` is not JSON-serialisable.
        """
        payload = {
            "sample_id": sample_id,
            "content_hash": content_hash,
            "encoder_id": encoder_id,
            "settings": dict(settings),
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # -- reading ------------------------------------------------------------------------------------
    def _forked(self) -> None:
        """After a fork, file descriptors and the writer belong to the parent: start afresh."""
        if os.getpid() != self._pid:
            self._pid, self._handles, self._writer = os.getpid(), {}, None

    @property
    def index(self) -> ShardIndex:
        if self._index is None:
            self.refresh()
        return self._index

    def refresh(self) -> None:
        """Re-read every shard's index (entries other processes wrote since)."""
        index = ShardIndex(self.folder)
        index.load()
        self._index, self._own = index, {}

    def _locations(self, key: str) -> list[Location]:
        digest = _digest(key)
        return self._own.get(digest, []) + self.index.find(digest)

    def contains(self, key: str) -> bool:
        """Whether an entry is recorded for ``key`` (its bytes are checked only when read)."""
        return bool(self._locations(key))

    def _read(self, location: Location) -> bytes:
        self._forked()
        fd = self._handles.get(location.shard)
        if fd is None:
            fd = os.open(self.folder / location.shard, os.O_RDONLY)
            self._handles[location.shard] = fd
        # pread: no shared file position, so threads of one process may read at once.
        return os.pread(fd, location.length, location.offset)

    def _load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load

        for location in self._locations(key):
            try:
                blob = self._read(location)
            except FileNotFoundError:
                continue
            if hashlib.sha256(blob).digest() == location.sha:
                try:
                    return load(blob), json.loads(_read_metadata(blob).get(META_KEY, "{}"))
                except (SafetensorError, ValueError, json.JSONDecodeError):
                    pass  # a checksum-valid blob that does not parse was written wrong: bad as well
            self.corrupt += 1
            self.last_corrupt_shard = self.folder / location.shard
            try:
                self._writer_here().mark_bad(location)
            except OSError as error:  # a read-only cache: the entry is still a miss here
                logger.warning("%s: an entry failed its checksum and cannot be marked bad (%s)",
                               self.last_corrupt_shard, error.strerror or error)
        self.misses += 1
        return None

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors of an entry, or None on a miss (a corrupt entry is marked bad and is a miss)."""
        found = self.get_with_meta(key)
        return None if found is None else found[0]

    def get_with_meta(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Like :meth:`get`, also returning the metadata dict given to :meth:`put`."""
        found = self._load(key)
        if found is not None:
            self.hits += 1
        return found

    # -- writing ------------------------------------------------------------------------------------
    def _writer_here(self) -> ShardWriter:
        self._forked()
        if self._writer is None:
            self._writer = ShardWriter(self.folder, **({"max_bytes": self.max_shard_bytes}
                                                       if self.max_shard_bytes else {}))
        return self._writer

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Location:
        """Append an entry to this process's shard.

        Args:
            key: From :meth:`key`.
            tensors: Name -> tensor (stored on CPU, contiguous, in its own dtype).
            meta: JSON-serialisable facts about the entry (encoder id, settings, shapes).

        Returns:
            Where the entry was written.
        """
        from safetensors.torch import save

        cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        blob = save(cpu, metadata={META_KEY: json.dumps(dict(meta or {}), sort_keys=True)})
        digest = _digest(key)
        location = self._writer_here().append(digest, blob, hashlib.sha256(blob).digest())
        self._own.setdefault(digest, []).insert(0, location)
        return location

    def get_or_compute(
        self, key: str, compute: Callable[[], Mapping[str, torch.Tensor]], meta: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The cached tensors, or ``compute()`` stored under ``key`` and returned."""
        found = self.get(key)
        if found is not None:
            return found
        tensors = dict(compute())
        self.put(key, tensors, meta)
        return tensors

    def sync(self) -> None:
        """Make this process's writes durable and visible to other machines (fsync)."""
        if self._writer is not None and self._writer.pid == os.getpid():
            self._writer.sync()

    def stats(self) -> CacheStats:
        """Entries, bytes and data files as of the last :meth:`refresh`."""
        index = self.index
        keys = index.records["key"]  # sorted: distinct keys are where the value changes
        entries = int((keys[1:] != keys[:-1]).sum()) + 1 if len(keys) else 0
        return CacheStats(entries=entries, bytes=index.data_bytes, shards=len(index.shards))

    def close(self) -> None:
        """Close files this process opened (the cache stays usable: they reopen on demand)."""
        if os.getpid() == self._pid:
            for fd in self._handles.values():
                os.close(fd)
            if self._writer is not None:
                self._writer.close()
        self._handles, self._writer = {}, None


def _digest(key: str) -> bytes:
    if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"FeatureCache: key must be a lowercase sha256 hex digest, got {key!r}")
    return bytes.fromhex(key)


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a serialised safetensors blob (header: u64 length + JSON)."""
    if len(data) < 8:
        raise ValueError("safetensors data shorter than its header length")
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    return dict(header.get("__metadata__") or {})
