"""Answer targets: the JSON a sample should produce for a task, built from the keys the task asks for.

A task of the prompt file lists the answer keys it asks for (``PromptFile.task_keys``: ``labels``,
``explanation``, ``evidence``); nothing here knows task names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from affect_llm.data.manifest import ManifestRow

if TYPE_CHECKING:
    from affect_llm.prompts import PromptFile

EVIDENCE_KEYS = ("audio", "video", "text")


def evidence_of(row: ManifestRow) -> dict[str, Any] | None:
    evidence = row.extra.get("evidence") if isinstance(row.extra, dict) else None
    if not isinstance(evidence, dict):
        return None
    return {key: evidence.get(key) for key in EVIDENCE_KEYS}


def answer_for(row: ManifestRow, keys: Sequence[str]) -> str | None:
    """The target answer of ``row`` holding ``keys`` in their order, or None when the row lacks one.

    ``evidence`` is optional beside labels (most corpora record none), required when it is the
    only key asked for. The order is the prompt's (v5 reasons first: evidence, explanation, labels).
    """
    answer: dict[str, Any] = {}
    for key in keys:
        value = _target_value(row, key)
        if value is not None:
            answer[key] = value
        elif key != "evidence" or len(keys) == 1:
            return None
    if not answer:
        return None
    # Fixed key order and separators: the model learns one canonical layout.
    return json.dumps(answer, ensure_ascii=False)


def answerable(prompt: PromptFile) -> Callable[[ManifestRow, str], bool]:
    """``(row, task) -> bool``: whether ``row`` records the answer ``task`` of ``prompt`` asks for
    (the rows a stage can train, validate or reward on)."""
    return lambda row, task: answer_for(row, prompt.task_keys(task)) is not None


def _target_value(row: ManifestRow, key: str) -> Any:
    if key == "labels":
        return list(row.labels) if row.labels else None
    if key == "explanation":
        return row.explanation or None
    return evidence_of(row)
