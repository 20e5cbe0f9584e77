"""Manifest and output helpers of the generation tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write manifest rows (dicts) as JSONL; media paths should be absolute."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
