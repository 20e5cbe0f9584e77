"""Parse a model's structured answer (``prompts/tasks/vN.yaml``: labels, explanation, evidence).

The first JSON object in the text is taken, so chatty prefixes, suffixes and code fences are
tolerated. Anything else (no object, truncated JSON, labels of the wrong type) is reported as an
error with the reason; an answer is never coerced into a default label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

EVIDENCE_KEYS = ("audio", "video", "text")


@dataclass(frozen=True)
class Answer:
    """One parsed answer.

    Attributes:
        labels: Emotion words, lower-cased and stripped, most salient first (empty for tasks
            that do not ask for labels).
        explanation: Free-text explanation, or None when absent.
        evidence: Per-channel cues (``audio``, ``video``, ``text``; None for an absent channel),
            or None when the answer has no evidence object.
    """

    labels: list[str]
    explanation: str | None = None
    evidence: dict[str, str | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping with the keys of the answer schema."""
        return {
            "labels": list(self.labels),
            "explanation": self.explanation,
            "evidence": None if self.evidence is None else dict(self.evidence),
        }


@dataclass(frozen=True)
class ParseResult:
    """Outcome of :func:`parse_answer`: an answer or the reason there is none, plus the raw text."""

    answer: Answer | None
    error: str | None
    raw: str

    @property
    def ok(self) -> bool:
        return self.answer is not None and self.error is None


def find_json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """First JSON object in ``text``: ``(object, None)`` or ``(None, reason)``."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    first_error: str | None = None
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            if first_error is None:
                tail = text[start:]
                # Output cut off by a token budget: the object never closes.
                truncated = (
                    exc.pos >= len(text.rstrip().rstrip("`").rstrip())
                    or exc.msg.startswith("Unterminated")
                    or tail.count("{") > tail.count("}")
                )
                first_error = f"{'truncated' if truncated else 'malformed'} JSON at char {exc.pos}: {exc.msg}"
        else:
            if isinstance(value, dict):
                return value, None
        start = text.find("{", start + 1)
    return None, first_error or "no JSON object in text"


def _parse_labels(obj: dict[str, Any], require_labels: bool) -> tuple[list[str] | None, str | None]:
    if "labels" not in obj:
        return (None, "field 'labels' missing") if require_labels else ([], None)
    labels = obj["labels"]
    if isinstance(labels, str):
        return None, "field 'labels' must be a list of strings, got a string"
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return None, f"field 'labels' must be a list of strings, got {json.dumps(labels)[:80]}"
    cleaned = [x.strip().lower() for x in labels]
    return [x for x in cleaned if x], None


def _parse_evidence(obj: dict[str, Any]) -> tuple[dict[str, str | None] | None, str | None]:
    evidence = obj.get("evidence")
    if evidence is None:
        return None, None
    if not isinstance(evidence, dict):
        return None, f"field 'evidence' must be an object, got {type(evidence).__name__}"
    out: dict[str, str | None] = {}
    for key, value in evidence.items():
        if value is not None and not isinstance(value, str):
            return None, f"field 'evidence.{key}' must be a string or null, got {type(value).__name__}"
        out[str(key).lower()] = value.strip() if isinstance(value, str) and value.strip() else None
    for key in EVIDENCE_KEYS:
        out.setdefault(key, None)
    return out, None


def parse_answer(text: str | None, require_labels: bool = True) -> ParseResult:
    """Parse a structured answer from generated text.

    Args:
        text: Model output; may hold prose or code fences around the JSON object.
        require_labels: Whether a missing ``labels`` field is an error (False for a task that
            asks for evidence only).

    Returns:
        A :class:`ParseResult`; ``ok`` is False with ``error`` naming the reason when the text is
        empty, has no JSON object, is truncated or malformed, or has fields of the wrong type.
    """
    raw = "" if text is None else str(text)
    if not raw.strip():
        return ParseResult(None, "empty output", raw)
    obj, error = find_json_object(raw)
    if obj is None:
        return ParseResult(None, error, raw)
    labels, error = _parse_labels(obj, require_labels)
    if labels is None:
        return ParseResult(None, error, raw)
    explanation = obj.get("explanation")
    if explanation is not None and not isinstance(explanation, str):
        return ParseResult(
            None, f"field 'explanation' must be a string, got {type(explanation).__name__}", raw
        )
    evidence, error = _parse_evidence(obj)
    if error is not None:
        return ParseResult(None, error, raw)
    explanation = explanation.strip() or None if isinstance(explanation, str) else None
    return ParseResult(Answer(labels=labels, explanation=explanation, evidence=evidence), None, raw)
