"""A disk cache of frozen-encoder features, one safetensors file per entry.

The key is the sha256 of everything that determines the features: the sample id, the content
hash of its media, the encoder identity and the sampling settings (frames, fps, face size...).
Change any of them and the entry is simply not found.

Entries live in ``<root>/<key[:2]>/<key>.safetensors`` so no folder grows to millions of files.
Writes go to a temporary file in the same folder and are published with ``os.replace``, which
is atomic on POSIX: concurrent writers of one key each publish a whole file and the last one
wins, and a reader never sees a half-written entry. A file that is still damaged (a copy cut
short, a full disk) fails to load or fails its checksum, is deleted and counted as a miss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from affect_llm.fileio import atomic_write_bytes

CHECKSUM_KEY = "affect_llm.sha256"
META_KEY = "affect_llm.meta"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # A uint8 view hashes every dtype (bfloat16 included) without a numpy round trip per dtype.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Safetensors entries under ``root``; counts hits, misses and corrupt entries per instance.

    Args:
        root: Cache folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    @staticmethod
    def key(sample_id: str, content_hash: str, encoder_id: str, settings: Mapping[str, Any]) -> str:
        """The entry key: sha256 of the canonical JSON of its inputs.

        Args:
            sample_id: The manifest row id.
            content_hash: Hash of the media bytes (:func:`affect_llm.hashing.file_sha256`).
            encoder_id: Encoder identity (name and weights hash).
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

    def path(self, key: str) -> Path:
        """Where an entry lives (whether or not it exists)."""
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"FeatureCache: key must be a lowercase hex digest, got {key!r}")
        return self.root / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            tensors = load(data)
            metadata = _read_metadata(data)
            ok = metadata.get(CHECKSUM_KEY) == tensors_sha256(tensors)
            meta = json.loads(metadata.get(META_KEY, "{}"))
        except (SafetensorError, ValueError, json.JSONDecodeError):
            ok, tensors, meta = False, {}, {}
        if not ok:
            self.corrupt += 1
            self.misses += 1
            # Another process may have replaced or removed it meanwhile; either way it is gone.
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return tensors, meta

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors of an entry, or None on a miss (a corrupt entry is deleted and is a miss)."""
        found = self._load(key)
        return None if found is None else found[0]

    def get_with_meta(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Like :meth:`get`, also returning the metadata dict given to :meth:`put`."""
        return self._load(key)

    def put(
        self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None
    ) -> Path:
        """Write an entry atomically.

        Args:
            key: From :meth:`key`.
            tensors: Name -> tensor (stored on CPU, contiguous).
            meta: JSON-serialisable facts about the entry (encoder id, settings, shapes).

        Returns:
            The entry path.
        """
        from safetensors.torch import save

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        metadata = {CHECKSUM_KEY: tensors_sha256(cpu), META_KEY: json.dumps(dict(meta or {}), sort_keys=True)}
        data = save(cpu, metadata=metadata)
        return atomic_write_bytes(path, data)

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Mapping[str, torch.Tensor]],
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The cached tensors, or ``compute()`` stored under ``key`` and returned."""
        found = self.get(key)
        if found is not None:
            return found
        tensors = dict(compute())
        self.put(key, tensors, meta)
        return tensors


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a serialised safetensors file (header: u64 length + JSON)."""
    if len(data) < 8:
        raise ValueError("safetensors data shorter than its header length")
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    return dict(header.get("__metadata__") or {})
