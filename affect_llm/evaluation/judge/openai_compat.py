"""Judge served by any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp, hosted APIs).

Uses only the standard library (urllib). Temperature 0; HTTP 429, 5xx, timeouts and malformed
answers are retried a bounded number of times with exponential backoff.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from affect_llm.evaluation.judge.cache import JudgeCache
from affect_llm.evaluation.judge.chat import ChatJudge, RetryableJudgeError
from affect_llm.evaluation.judge.protocol import JudgeError


class OpenAICompatJudge(ChatJudge):
    """Chat-completions judge.

    Args:
        base_url: API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: Model name sent in the request.
        api_key_env: Environment variable holding the bearer token (optional for local servers).
        timeout: Seconds per request.
        max_retries: Retries after the first attempt.
        cache: Optional disk cache.
        prompt_version: Judge prompt version.
        backoff_s: First backoff delay in seconds.
        sleep: Injected for tests.
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
    ) -> None:
        kwargs: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
        super().__init__(prompt_version, cache, max_retries, backoff_s, **kwargs)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout

    @property
    def model_name(self) -> str:
        return self.model

    def _request(self, system: str, user: str) -> urllib.request.Request:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            **self.decoding,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers)

    def _generate(self, system: str, user: str) -> str:
        try:
            with urllib.request.urlopen(self._request(system, user), timeout=self.timeout) as response:
                payload = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise RetryableJudgeError(f"{self.url}: HTTP {exc.code}") from exc
            raise JudgeError(f"{self.url}: HTTP {exc.code} {exc.reason}") from exc
        except TimeoutError as exc:
            raise RetryableJudgeError(f"{self.url}: timed out after {self.timeout} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise RetryableJudgeError(f"{self.url}: timed out after {self.timeout} s") from exc
            raise JudgeError(f"{self.url}: cannot connect ({exc.reason})") from exc
        return _message_content(payload, self.url)


def _message_content(payload: str, url: str) -> str:
    """``choices[0].message.content`` of a chat-completions response; retryable when malformed."""
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise RetryableJudgeError(f"{url}: malformed response body ({exc!r}): {payload[:120]!r}") from exc
    if not isinstance(content, str):
        raise RetryableJudgeError(f"{url}: message content is {type(content).__name__}, not text")
    return content
