"""Judge served by any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp, hosted APIs).

Built on the official ``openai`` client (the ``eval`` extra). Temperature 0; HTTP 429, 5xx,
timeouts and malformed answers are retried a bounded number of times with exponential backoff
(the client's own retries are off, so the bound is this judge's). Answers are constrained to the
task's JSON schema where the server supports it:

- ``response_format``: ``{"type": "json_schema", ...}``, honoured by vLLM (guided decoding) and
  by hosted APIs with structured outputs;
- ``guided_json``: vLLM's older ``extra_body`` field;
- ``off``: no constraint (the answer is still checked).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Literal

from affect_llm.evaluation.judge.cache import JudgeCache
from affect_llm.evaluation.judge.chat import ChatJudge, RefusedJudgeRequest, RetryableJudgeError
from affect_llm.evaluation.judge.protocol import JudgeError

# Statuses a server gives one request it will not take (too long, filtered, unprocessable).
ITEM_REFUSALS = (400, 413, 422)
StructuredOutput = Literal["response_format", "guided_json", "off"]
STRUCTURED_OUTPUTS: tuple[StructuredOutput, ...] = ("response_format", "guided_json", "off")


class OpenAICompatJudge(ChatJudge):
    """Chat-completions judge.

    Args:
        base_url: API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: Model name sent in the request.
        api_key_env: Environment variable holding the bearer token (optional for local servers).
        timeout: Seconds per request.
        max_retries: Retries after the first attempt.
        cache: Optional disk cache.
        prompt_version: Judge prompt version.
        backoff_s: First backoff delay in seconds.
        sleep: Injected for tests.
        max_in_flight: Requests kept running at once by ``score_many`` / ``ask_many``.
        structured_output: How the answer's JSON schema is sent (see the module docstring).

    Raises:
        ValueError: ``base_url`` is not http(s) or ``structured_output`` is unknown.
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        cache: JudgeCache | None = None,
        prompt_version: str = "v1",
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] | None = None,
        max_in_flight: int = 16,
        structured_output: StructuredOutput = "response_format",
    ) -> None:
        import openai

        kwargs: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
        super().__init__(prompt_version, cache, max_retries, backoff_s, max_in_flight=max_in_flight, **kwargs)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url must start with http:// or https://, got {base_url!r}")
        if structured_output not in STRUCTURED_OUTPUTS:
            raise ValueError(
                f"structured_output must be one of {STRUCTURED_OUTPUTS}, got {structured_output!r}"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.structured_output = structured_output
        # Local servers need no key, but the client insists on one; it is sent and ignored.
        api_key = os.environ.get(api_key_env) or "unused"
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self._answered = False  # set by the first answer: later 4xx refusals are the item's own

    @property
    def model_name(self) -> str:
        return self.model

    def decoding_for(self, max_tokens: int, constrained: bool) -> dict[str, Any]:
        decoding: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_tokens}
        # Constrained decoding can change an answer, so it is part of the cache key; without it
        # the key is the one earlier versions wrote.
        if constrained and self.structured_output != "off":
            decoding["structured_output"] = self.structured_output
        return decoding

    def _schema_arguments(self, schema: dict[str, Any] | None) -> dict[str, Any]:
        if schema is None or self.structured_output == "off":
            return {}
        if self.structured_output == "guided_json":
            return {"extra_body": {"guided_json": schema}}
        return {
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        }

    def _generate(self, system: str, user: str, schema: dict[str, Any] | None, max_tokens: int) -> str:
        import openai

        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        try:
            completion = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0.0,
                max_tokens=max_tokens,
                **self._schema_arguments(schema),
            )
        except openai.APITimeoutError as exc:
            raise RetryableJudgeError(f"{self.url}: timed out after {self.timeout} s") from exc
        except openai.APIConnectionError as exc:
            raise JudgeError(f"{self.url}: cannot connect ({exc.__cause__ or exc})") from exc
        except openai.APIStatusError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                raise RetryableJudgeError(f"{self.url}: HTTP {exc.status_code}") from exc
            if exc.status_code in ITEM_REFUSALS and (self._answered or _names_the_context(exc)):
                # After answers came back, a refusal is about this request (its length, its content),
                # not the setup: that item fails and the evaluation goes on.
                raise RefusedJudgeRequest(f"{self.url}: HTTP {exc.status_code}: {exc.message}") from exc
            structured = schema is not None and self.structured_output != "off"
            hint = " (try --judge-structured off)" if structured and exc.status_code == 400 else ""
            raise JudgeError(f"{self.url}: {exc.message}{hint}") from exc
        except openai.APIResponseValidationError as exc:
            raise RetryableJudgeError(f"{self.url}: malformed response body ({exc.message})") from exc
        except json.JSONDecodeError as exc:
            # The client parses the body itself and lets a non-JSON body escape as this error.
            raise RetryableJudgeError(f"{self.url}: malformed response body ({exc.msg})") from exc
        content = _message_content(completion, self.url)
        self._answered = True
        return content


def _names_the_context(error: Any) -> bool:
    """Whether a refusal says the prompt is past the model's context (vLLM's and OpenAI's wording)."""
    text = f"{getattr(error, 'code', '')} {getattr(error, 'message', '')}".lower()
    return "context_length_exceeded" in text or "maximum context length" in text


def _message_content(completion: Any, url: str) -> str:
    """``choices[0].message.content`` of a chat completion; retryable when malformed."""
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError, TypeError) as exc:
        raise RetryableJudgeError(
            f"{url}: malformed response body ({exc!r}): {str(completion)[:120]!r}"
        ) from exc
    if not isinstance(content, str):
        raise RetryableJudgeError(f"{url}: message content is {type(content).__name__}, not text")
    return content
