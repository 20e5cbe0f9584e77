"""Answer targets: the JSON a sample should produce for a task, built from the keys the task asks for.

A task of the prompt file lists the answer keys it asks for (``PromptFile.task_keys``: ``labels``,
``explanation``, ``evidence``); nothing here knows task names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from affect_llm.data.manifest import ManifestRow

EVIDENCE_KEYS = ("audio", "video", "text")




def evidence_of(row: ManifestRow) -> dict[str, Any] | None:
    evidence = row.extra.get("evidence") if isinstance(row.extra, dict) else None
    if not isinstance(evidence, dict):
        return None
    return {key: evidence.get(key) for key in EVIDENCE_KEYS}


def answer_for(row: ManifestRow, keys: Sequence[str]) -> str | None:
    """The target answer of ``row`` holding ``keys``, or None when the row lacks one of them.

    ``evidence`` is optional beside labels (most corpora record none), required when it is the
    only key asked for.
    """
    answer: dict[str, Any] = {}
    if "labels" in keys:
        if not row.labels:
            return None
        answer["labels"] = list(row.labels)
    if "explanation" in keys:
        if not row.explanation:
            return None
        answer["explanation"] = row.explanation
    if "evidence" in keys:
        evidence = evidence_of(row)
        if evidence is not None:
            answer["evidence"] = evidence
        elif len(keys) == 1:
            return None
    if not answer:
        return None
    # Fixed key order and separators: the model learns one canonical layout.
    return json.dumps(answer, ensure_ascii=False)
