"""OpenAI response bodies, and the structured answer every completion carries.

Every completion (the last chunk of a stream) carries an ``affect`` object beside the OpenAI
fields: the parsed answer (labels, explanation, per-channel evidence) or the reason the text is not
one (:func:`affect_llm.labels.parse.parse_answer`, never coerced), the modalities the model read,
and where the clip's words came from (the client, or speech recognition, marked ``recognised``).
With ``response_format`` JSON the message content is that structured answer as a JSON object.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from affect_llm.features.asr import Transcription
from affect_llm.labels.parse import parse_answer


@dataclass
class CompletionMeta:
    """What one completion was about, for its ``affect`` object and its usage.

    Attributes:
        model: The served model name.
        task: The task instruction followed, None when the user asked a question.
        require_labels: Whether the task's answer must hold labels.
        modalities: What the model read of the clip.
        absent: The evidence channels (``audio``, ``video``, ``text``) the clip does not have.
        transcript: Where the words came from (see :func:`transcript_record`), None without words.
        media_cache: ``hit``, ``miss`` or ``none`` (no media).
        prompt_tokens: Prompt length in tokens, media tokens included.
        streaming: ``per token`` or ``per answer`` (the backend's granularity).
    """

    model: str
    task: str | None
    require_labels: bool
    modalities: list[str]
    absent: list[str]
    transcript: dict[str, Any] | None
    media_cache: str
    prompt_tokens: int
    streaming: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def transcript_record(client_text: str | None, recognised: Transcription | None) -> dict[str, Any] | None:
    """The words channel as reported: given by the client, recognised from speech, or absent."""
    if client_text is not None:
        return {"text": client_text, "source": "client", "recognised": False}
    if recognised is None:
        return None
    return {"text": recognised.text, "source": recognised.source, "recognised": True,
            "language": recognised.language, "dropped": recognised.dropped}


def structured_answer(text: str, meta: CompletionMeta) -> dict[str, Any]:
    """The parsed answer, or nulls with the reason it does not parse; the raw text always."""
    parsed = parse_answer(text, require_labels=meta.require_labels)
    answer = parsed.answer.to_dict() if parsed.ok else {"labels": None, "explanation": None, "evidence": None}
    return {**answer, "parse_status": "ok" if parsed.ok else "unparseable", "error": parsed.error, "raw": text}


def affect_record(text: str, meta: CompletionMeta) -> dict[str, Any]:
    """The ``affect`` object of a completion."""
    return {"answer": structured_answer(text, meta), "task": meta.task, "modalities": meta.modalities,
            "absent_channels": meta.absent, "transcript": meta.transcript, "media_cache": meta.media_cache, "streaming": meta.streaming}


def usage(meta: CompletionMeta, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens loaded from kept prefixes, not computed."""
    return {"prompt_tokens": meta.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": meta.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_body(text: str, finish_reason: str, tokens: int, meta: CompletionMeta, as_json: bool,
                    cached_tokens: int = 0) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    affect = affect_record(text, meta)
    content = json.dumps(affect["answer"], ensure_ascii=False) if as_json else text
    return {
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage(meta, tokens, cached_tokens), "affect": affect,
    }


def chunk_body(meta: CompletionMeta, delta: dict[str, Any], finish_reason: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object."""
    return {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}


def usage_chunk(meta: CompletionMeta, tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """The closing chunk of ``stream_options.include_usage``: no choices, the usage."""
    return {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
            "choices": [], "usage": usage(meta, tokens, cached_tokens)}
