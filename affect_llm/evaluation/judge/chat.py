"""Shared logic of judges that ask a chat model: tasks, schema checks, retries, cache, concurrency.

Every request is a :class:`ChatTask` (a prompt template, its fields, the JSON schema of the
answer and the function that checks it). Backends only implement
``_generate(system, user, schema, max_tokens) -> str``; raising :class:`RetryableJudgeError`
there (rate limit, server error, timeout) triggers a bounded retry with exponential backoff, as
does an answer that fails its check. :meth:`ChatJudge.ask_many` keeps up to ``max_in_flight``
requests running and writes the cache in input order, so a concurrent run leaves the same cache
file, byte for byte, as a one-at-a-time run.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from affect_llm.evaluation.judge.cache import JudgeCache, cache_key
from affect_llm.evaluation.judge.pool import run_ordered
from affect_llm.evaluation.judge.protocol import JudgeKind, JudgeResult, Preference
from affect_llm.labels.parse import find_json_object
from affect_llm.prompts import PromptFile, load_prompt

Check = Callable[[str], tuple[Any, str | None]]
SCORE_MAX_TOKENS = 32


class RetryableJudgeError(RuntimeError):
    """A transient failure (HTTP 429/5xx, timeout, malformed body) worth retrying."""


class RefusedJudgeRequest(RuntimeError):
    """The judge refused this one request (a prompt past its context, a content filter): that item's
    failure, recorded and not retried; the other items go on."""


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


@dataclass(frozen=True)
class ChatTask:
    """One request to a chat judge.

    Attributes:
        prompt: Prompt file holding ``template`` (its ref is part of the cache key).
        template: Key of the user-message template in ``prompt``; ``{name}`` placeholders are
            replaced by ``fields``.
        fields: Placeholder values, as ``(name, value)`` pairs.
        check: Turns the raw answer into ``(value, None)`` or ``(None, reason)``.
        schema: JSON schema of the answer, sent for constrained decoding where supported.
        max_tokens: Generation budget.
        kind: Task name in the cache key (``clue``, ``label``, ``mer-ov-groups``, ...).
        key_texts: The texts the cache key covers besides the prompt ref (reference, prediction).
        stored_as: ``score`` rows (the 1-10 judge format) or ``value`` rows in the cache.
    """

    prompt: PromptFile
    template: str
    fields: tuple[tuple[str, str], ...]
    check: Check
    schema: dict[str, Any] | None
    max_tokens: int
    kind: str
    key_texts: tuple[str, str]
    stored_as: Literal["score", "value"] = "value"

    def system(self) -> str:
        """System message of the prompt file ('' when it has none)."""
        return str(self.prompt.data.get("system") or "")

    def user(self) -> str:
        text = str(self.prompt[self.template])
        for name, value in self.fields:
            text = text.replace("{" + name + "}", value)
        return text


@dataclass(frozen=True)
class TaskAnswer:
    """Outcome of one task: the checked value or the reason there is none, plus the raw text."""

    value: Any
    raw: str
    error: str | None
    cached: bool = False


class ChatJudge(ABC):
    """Base class of chat-model judges.

    Args:
        prompt_version: Version of ``prompts/judge/<version>.yaml``.
        cache: Optional disk cache; a hit makes no model call.
        max_retries: Retries after the first attempt (transient errors and malformed answers).
        backoff_s: First backoff delay; doubles per retry.
        sleep: Injected for tests.
        max_in_flight: Requests :meth:`ask_many` keeps running at once.
    """

    backend = "chat"

    def __init__(
        self,
        prompt_version: str = "v1",
        cache: JudgeCache | None = None,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        max_in_flight: int = 1,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.prompt: PromptFile = load_prompt("judge", prompt_version)
        self.cache = cache
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_in_flight = max_in_flight
        self.score_max_tokens = SCORE_MAX_TOKENS
        self._sleep = sleep

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Name of the judging model (part of the identity and the cache key)."""

    @property
    def decoding(self) -> dict[str, Any]:
        """Decoding settings of a 1-10 score request (part of its cache key)."""
        return self.decoding_for(self.score_max_tokens, constrained=True)

    def decoding_for(self, max_tokens: int, constrained: bool) -> dict[str, Any]:
        """Decoding settings that affect an answer; ``constrained`` when a schema is sent."""
        return {"temperature": 0.0, "max_tokens": max_tokens}

    @property
    def identity(self) -> str:
        return f"{self.backend}:{self.model_name}|{self.prompt.ref}"

    @abstractmethod
    def _generate(self, system: str, user: str, schema: dict[str, Any] | None, max_tokens: int) -> str:
        """One answer of the backend (raises RetryableJudgeError to retry)."""

    def _ask(
        self, system: str, user: str, check: Check, schema: dict[str, Any] | None, max_tokens: int
    ) -> tuple[Any, str, str | None]:
        raw, error = "", "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                raw = self._generate(system, user, schema, max_tokens)
            except RetryableJudgeError as exc:
                raw, error = "", str(exc)
                continue
            except RefusedJudgeRequest as exc:
                return None, "", str(exc)
            value, error = check(raw)
            if error is None:
                return value, raw, None
        return None, raw, f"{error} (after {self.max_retries + 1} attempts)"

    def _key(self, task: ChatTask) -> str:
        decoding = self.decoding_for(task.max_tokens, constrained=task.schema is not None)
        return cache_key(self.identity, task.prompt.ref, *task.key_texts, task.kind, decoding)

    def _cached(self, task: ChatTask, key: str) -> TaskAnswer | None:
        if self.cache is None:
            return None
        if task.stored_as == "score":
            hit = self.cache.get(key)
            return None if hit is None else TaskAnswer(hit.score, hit.raw, None, cached=True)
        found = self.cache.get_value(key)
        return None if found is None else TaskAnswer(found[0], found[1], None, cached=True)

    def _store(self, task: ChatTask, key: str, answer: TaskAnswer) -> None:
        if self.cache is None or answer.error is not None:
            return  # failures are not cached, so a rerun retries them
        if task.stored_as == "score":
            self.cache.put(key, JudgeResult(score=answer.value, raw=answer.raw))
        else:
            self.cache.put_value(key, answer.value, answer.raw)

    def _answer(self, task: ChatTask) -> TaskAnswer:
        value, raw, error = self._ask(task.system(), task.user(), task.check, task.schema, task.max_tokens)
        return TaskAnswer(value, raw, error)

    def ask(self, task: ChatTask) -> TaskAnswer:
        """Answer one task (from the cache when possible)."""
        return self.ask_many([task])[0]

    def ask_many(self, tasks: Sequence[ChatTask]) -> list[TaskAnswer]:
        """Answer tasks with up to ``max_in_flight`` requests at once; results in input order.

        Identical tasks are asked once; the repeats are reported as cached, as they would be when
        asked one after the other.
        """
        answers: list[TaskAnswer | None] = [None] * len(tasks)
        first_of: dict[str, int] = {}
        todo: list[tuple[int, str]] = []
        for index, task in enumerate(tasks):
            key = self._key(task)
            if (hit := self._cached(task, key)) is not None:
                answers[index] = hit
            elif key not in first_of:
                first_of[key] = index
                todo.append((index, key))

        def handle(position: int, answer: TaskAnswer) -> None:
            index, key = todo[position]
            answers[index] = answer
            self._store(tasks[index], key, answer)

        run_ordered(lambda item: self._answer(tasks[item[0]]), todo, self.max_in_flight, handle)
        for index, task in enumerate(tasks):
            if answers[index] is None:
                first = answers[first_of[self._key(task)]]
                assert first is not None  # every key in first_of was answered above
                answers[index] = TaskAnswer(first.value, first.raw, first.error, cached=first.error is None)
        return [a for a in answers if a is not None]

    def score_task(self, reference: str, prediction: str, kind: JudgeKind) -> ChatTask:
        """The 1-10 ``clue`` or ``label`` request for one pair."""
        if kind not in ("clue", "label"):
            raise ValueError(f"judge kind must be 'clue' or 'label', got {kind!r}")
        schemas = self.prompt.data.get("schemas") or {}
        return ChatTask(
            prompt=self.prompt,
            template=kind,
            fields=(("reference", reference), ("prediction", prediction)),
            check=check_score,
            schema=schemas.get("score"),
            max_tokens=self.score_max_tokens,
            kind=kind,
            key_texts=(reference, prediction),
            stored_as="score",
        )

    def score(self, reference: str, prediction: str, kind: JudgeKind) -> JudgeResult:
        """Score with the ``clue`` or ``label`` prompt; an empty prediction scores 1 without a call."""
        return self.score_many([(reference, prediction, kind)])[0]

    def score_many(self, items: Sequence[tuple[str, str, JudgeKind]]) -> list[JudgeResult]:
        """Scores of ``(reference, prediction, kind)`` items, asked concurrently, in input order."""
        results: list[JudgeResult | None] = [None] * len(items)
        tasks, positions = [], []
        for index, (reference, prediction, kind) in enumerate(items):
            task = self.score_task(reference, prediction, kind)  # validates kind even when empty
            if not prediction.strip():
                results[index] = JudgeResult(score=1.0, raw="", error=None)
                continue
            tasks.append(task)
            positions.append(index)
        for index, answer in zip(positions, self.ask_many(tasks), strict=True):
            results[index] = JudgeResult(answer.value, answer.raw, answer.error, answer.cached)
        return [r for r in results if r is not None]

    def prefer(
        self, reference: str, first: str, second: str, kind: JudgeKind
    ) -> tuple[Preference | None, str]:
        """Which of ``first``/``second`` agrees better with ``reference`` (one order only)."""
        fields = {"reference": reference, "first": first, "second": second, "kind": kind}
        task = ChatTask(
            prompt=self.prompt,
            template="pairwise",
            fields=tuple(fields.items()),
            check=check_preference,
            schema=(self.prompt.data.get("schemas") or {}).get("pairwise"),
            max_tokens=SCORE_MAX_TOKENS,
            kind="pairwise",
            key_texts=(reference, json.dumps([first, second])),
        )
        value, raw, _ = self._ask(task.system(), task.user(), task.check, task.schema, task.max_tokens)
        return value, raw
