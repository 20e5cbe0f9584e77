"""Disk cache of judge results, keyed by everything that determines the answer.

One JSON line per result in ``<dir>/judge_cache.jsonl``; appending keeps concurrent readers safe
and a crash loses at most the last line, which is skipped on load. Scores are stored as
``{"key", "score", "raw"}``; other judge tasks (synonym groups, sentiment) as
``{"key", "value", "raw"}``. Writes are serialised by a lock, so judge threads may share one cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from affect_llm.evaluation.judge.protocol import JudgeResult

CACHE_FILE = "judge_cache.jsonl"


def cache_key(
    judge_id: str, prompt_ref: str, reference: str, prediction: str, kind: str, decoding: dict[str, Any]
) -> str:
    """SHA-256 over the judge identity, prompt ref, both texts, the kind and the decoding settings."""
    payload = json.dumps(
        {
            "judge": judge_id,
            "prompt": prompt_ref,
            "reference": reference,
            "prediction": prediction,
            "kind": kind,
            "decoding": decoding,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Append-only JSONL cache of successful judge results.

    Args:
        directory: Folder holding ``judge_cache.jsonl`` (created when missing).
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        self._lock = threading.Lock()
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                # A torn last line after a crash: the entry is recomputed.
                self.skipped_lines += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                self._entries[row["key"]] = row

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> JudgeResult | None:
        """Cached result for ``key`` (marked ``cached=True``), or None."""
        row = self._entries.get(key)
        if row is None or "score" not in row:
            return None
        return JudgeResult(score=row.get("score"), raw=row.get("raw", ""), error=None, cached=True)

    def put(self, key: str, result: JudgeResult) -> None:
        """Store a successful result; failures are not cached so a rerun retries them."""
        if not result.ok:
            return
        self._append({"key": key, "score": result.score, "raw": result.raw})

    def get_value(self, key: str) -> tuple[Any, str] | None:
        """Cached ``(value, raw)`` of a non-score task for ``key``, or None."""
        row = self._entries.get(key)
        if row is None or "value" not in row:
            return None
        return row["value"], row.get("raw", "")

    def put_value(self, key: str, value: Any, raw: str) -> None:
        """Store the checked value of a non-score task (only successful answers are stored)."""
        self._append({"key": key, "value": value, "raw": raw})

    def _append(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._entries[row["key"]] = row
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
