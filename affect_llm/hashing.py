"""One place for content hashes: files (memoised by size and mtime), bytes, text and JSON values."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=8192)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the memo key, so an edited file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, memoised by ``(path, size, mtime)``.

    Raises:
        FileNotFoundError: If the file does not exist.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_sha256(text: str) -> str:
    return bytes_sha256(text.encode("utf-8"))


def json_sha256(value: Any) -> str:
    """Hash of a JSON value in canonical form (sorted keys, no spaces), so equal values hash equally."""
    return text_sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))
