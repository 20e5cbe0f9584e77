"""Disk cache of judge results, keyed by everything that determines the answer.

One JSON line per result in ``<dir>/judge_cache.jsonl``; appending keeps concurrent readers safe
and a crash loses at most the last line, which is skipped on load.
"""

from __future__ import annotations

import hashlib
import json
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
        if row is None:
            return None
        return JudgeResult(score=row.get("score"), raw=row.get("raw", ""), error=None, cached=True)

    def put(self, key: str, result: JudgeResult) -> None:
        """Store a successful result; failures are not cached so a rerun retries them."""
        if not result.ok:
            return
        row = {"key": key, "score": result.score, "raw": result.raw}
        self._entries[key] = row
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
