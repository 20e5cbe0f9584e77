"""Shared logic of judges that ask a chat model: prompts, schema checks, retries, cache.

Backends only implement ``_generate(system, user) -> str``; raising
:class:`RetryableJudgeError` there (rate limit, server error, timeout) triggers a bounded retry
with exponential backoff, as does an answer that fails its JSON schema.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from affect_llm.evaluation.judge.cache import JudgeCache, cache_key
from affect_llm.evaluation.judge.protocol import JudgeKind, JudgeResult, Preference
from affect_llm.labels.parse import find_json_object
from affect_llm.prompts import PromptFile, load_prompt


class RetryableJudgeError(RuntimeError):
    """A transient failure (HTTP 429/5xx, timeout) worth retrying."""


def check_score(text: str) -> tuple[float | None, str | None]:
    """Validate ``{"score": int 1..10}`` in ``text``: ``(score, None)`` or ``(None, reason)``."""
    obj, error = find_json_object(text)
    if obj is None:
        return None, f"judge answer has no JSON object: {error}"
    value = obj.get("score")
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
        return None, f"judge answer field 'score' must be an integer, got {value!r}"
    if not 1 <= int(value) <= 10:
        return None, f"judge answer field 'score' must be in 1..10, got {value}"
    return float(value), None


def check_preference(text: str) -> tuple[Preference | None, str | None]:
    """Validate ``{"better": "A"|"B"|"tie"}``; A/B are mapped to first/second."""
    obj, error = find_json_object(text)
    if obj is None:
        return None, f"judge answer has no JSON object: {error}"
    mapping: dict[str, Preference] = {"a": "first", "b": "second", "tie": "tie"}
    value = str(obj.get("better", "")).strip().lower()
    if value not in mapping:
        return None, f"judge answer field 'better' must be A, B or tie, got {obj.get('better')!r}"
    return mapping[value], None


class ChatJudge(ABC):
    """Base class of chat-model judges.

    Args:
        prompt_version: Version of ``prompts/judge/<version>.yaml``.
        cache: Optional disk cache; a hit makes no model call.
        max_retries: Retries after the first attempt (transient errors and malformed answers).
        backoff_s: First backoff delay; doubles per retry.
        sleep: Injected for tests.
    """

    backend = "chat"

    def __init__(
        self,
        prompt_version: str = "v1",
        cache: JudgeCache | None = None,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.prompt: PromptFile = load_prompt("judge", prompt_version)
        self.cache = cache
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._sleep = sleep

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Name of the judging model (part of the identity and the cache key)."""

    @property
    def decoding(self) -> dict[str, Any]:
        """Decoding settings that affect answers (part of the cache key)."""
        return {"temperature": 0.0, "max_tokens": 32}

    @property
    def identity(self) -> str:
        return f"{self.backend}:{self.model_name}|{self.prompt.ref}"

    @abstractmethod
    def _generate(self, system: str, user: str) -> str:
        """One answer of the backend to a system + user prompt (raises RetryableJudgeError to retry)."""

    def _render(self, template_key: str, **fields: str) -> str:
        text = str(self.prompt[template_key])
        for name, value in fields.items():
            text = text.replace("{" + name + "}", value)
        return text

    def _ask(self, user: str, check: Callable[[str], tuple[Any, str | None]]) -> tuple[Any, str, str | None]:
        raw, error = "", "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                raw = self._generate(str(self.prompt["system"]), user)
            except RetryableJudgeError as exc:
                raw, error = "", str(exc)
                continue
            value, error = check(raw)
            if error is None:
                return value, raw, None
        return None, raw, f"{error} (after {self.max_retries + 1} attempts)"

    def score(self, reference: str, prediction: str, kind: JudgeKind) -> JudgeResult:
        """Score with the ``clue`` or ``label`` prompt; an empty prediction scores 1 without a call."""
        if kind not in ("clue", "label"):
            raise ValueError(f"judge kind must be 'clue' or 'label', got {kind!r}")
        if not prediction.strip():
            return JudgeResult(score=1.0, raw="", error=None)
        key = cache_key(self.identity, self.prompt.ref, reference, prediction, kind, self.decoding)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        user = self._render(kind, reference=reference, prediction=prediction)
        value, raw, error = self._ask(user, check_score)
        result = JudgeResult(score=value, raw=raw, error=error)
        if self.cache is not None:
            self.cache.put(key, result)
        return result

    def prefer(
        self, reference: str, first: str, second: str, kind: JudgeKind
    ) -> tuple[Preference | None, str]:
        """Which of ``first``/``second`` agrees better with ``reference`` (one order only)."""
        user = self._render("pairwise", reference=reference, first=first, second=second, kind=kind)
        value, raw, _ = self._ask(user, check_preference)
        return value, raw
