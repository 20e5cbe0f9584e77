"""Answer targets: the JSON a sample should produce for each task template."""

from __future__ import annotations

import json
from typing import Any

from affect_llm.data.manifest import ManifestRow

EVIDENCE_KEYS = ("audio", "video", "text")


def evidence_of(row: ManifestRow) -> dict[str, Any] | None:
    evidence = row.extra.get("evidence") if isinstance(row.extra, dict) else None
    if not isinstance(evidence, dict):
        return None
    return {key: evidence.get(key) for key in EVIDENCE_KEYS}


def answer_for(row: ManifestRow, task: str) -> str | None:
    """The target answer of ``row`` for ``task``, or None when the row lacks what the task needs."""
    answer: dict[str, Any] = {}
    if task in ("perceive", "reason"):
        if not row.labels:
            return None
        answer["labels"] = list(row.labels)
    if task == "reason":
        if not row.explanation:
            return None
        answer["explanation"] = row.explanation
    if task in ("align", "reason"):
        evidence = evidence_of(row)
        if evidence is None:
            if task == "align":
                return None
        else:
            answer["evidence"] = evidence
    if not answer:
        return None
    # Fixed key order and separators: the model learns one canonical layout.
    return json.dumps(answer, ensure_ascii=False)
