"""``POST /v1/chat/completions``: a checked request -> clip -> prompt -> a batched job -> its answer.

Order matters for the guarantees: everything that can be refused without work is refused first
(fields, roles, media the model cannot read), then the request is admitted to the bounded queue
(503 when full), then its media are read and decoded (off the event loop, cached), then it waits
for a batch. A client that leaves at any point stops its work: while its media decode it is
withdrawn, while it waits it is dropped before its batch starts, while it generates its row leaves
the batch at the next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from affect_llm.generation.absent_explanation import backend_holds_explanation_rule
from affect_llm.generation.backend import (
    DecodingSettings,
    GenerationBackend,
    GenerationRequest,
    fits_context,
    llm_context_tokens,
    seed_or_fresh,
)
from affect_llm.modeling.media import MediaInputs
from affect_llm.processing.processor import absent_channels
from affect_llm.serving.conversation import (
    Conversation,
    build_prompt,
    check_model_reads,
    parse_conversation,
    resolve_task,
)
from affect_llm.serving.errors import ApiError, bad_request
from affect_llm.serving.media import Clip, MediaStore
from affect_llm.serving.options import ServeOptions
from affect_llm.serving.responses import (
    CompletionMeta,
    affect_record,
    chunk_body,
    completion_body,
    transcript_record,
    usage_chunk,
)
from affect_llm.serving.scheduler import Job, QueueFull, Scheduler, TokenChannel
from affect_llm.serving.schema import ChatCompletionRequest


def decoding_settings(chat: ChatCompletionRequest, options: ServeOptions) -> DecodingSettings:
    """Budget and sampling of a request: greedy unless ``temperature`` > 0 (then seeded sampling).

    Raises:
        ApiError: 400 for a budget over the server's limit, or ``ignore_eos`` or ``cache_salt`` with a
            backend that cannot honour it.
    """
    budget = chat.max_completion_tokens or chat.max_tokens or options.default_max_tokens
    if budget > options.max_tokens_limit:
        field = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
        raise bad_request(f"{budget} is over this server's limit of {options.max_tokens_limit} tokens", field)
    if chat.ignore_eos and options.backend != "hf":
        raise bad_request(f"not supported with the {options.backend} backend", "ignore_eos")
    if chat.cache_salt is not None and options.backend != "hf":
        # Refused rather than dropped: a client that asks for isolation must not believe it has it.
        raise bad_request(f"not supported with the {options.backend} backend", "cache_salt")
    guard = options.guard_absent_explanation and backend_holds_explanation_rule(options.backend)
    if not chat.temperature:
        return DecodingSettings(max_new_tokens=budget, null_absent_evidence=options.null_absent_evidence,
                                guard_absent_explanation=guard, draft_tokens=options.draft_tokens)
    return DecodingSettings(max_new_tokens=budget, do_sample=True, temperature=chat.temperature,
                            top_p=chat.top_p or 1.0, seed=seed_or_fresh(chat.seed),
                            null_absent_evidence=options.null_absent_evidence, guard_absent_explanation=guard)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ChatService:
    """Answers chat completions with a loaded backend, a media store and the batching scheduler."""

    def __init__(self, backend: GenerationBackend, store: MediaStore, scheduler: Scheduler,
                 options: ServeOptions) -> None:
        self.backend = backend
        self.processor = backend.processor
        self.store = store
        self.scheduler = scheduler
        self.options = options
        self.modalities = tuple(backend.model.config.modalities)
        self.context_tokens = llm_context_tokens(backend.model)

    async def respond(self, chat: ChatCompletionRequest, request: Request) -> Response:
        """The completion (JSON), or a stream of chunks (server-sent events)."""
        settings = decoding_settings(chat, self.options)
        conversation = parse_conversation(chat)
        check_model_reads(conversation, self.modalities)
        task = resolve_task(chat, conversation, self.processor)
        try:
            self.scheduler.admit()
        except QueueFull as full:
            raise ApiError(503, f"the server is busy ({self.scheduler.max_queue} requests wait); retry after "
                                f"{full.retry_after} s", None, "queue_full",
                           {"Retry-After": str(full.retry_after)}) from None
        try:
            job, meta = await self._job(chat, conversation, task, settings)
        except BaseException:
            self.scheduler.withdraw()
            raise
        self.scheduler.submit(job)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return EventSourceResponse(self._events(job.channel, meta, include_usage), sep="\n", ping=15)
        return await self._complete(job.channel, meta, chat.wants_json, request)

    async def _job(self, chat: ChatCompletionRequest, conversation: Conversation, task: str | None,
                   settings: DecodingSettings) -> tuple[Job, CompletionMeta]:
        clip, cache = None, "none"
        if conversation.media:
            clip, hit = await self.store.prepare(conversation.media, want_words=chat.transcript is None)
            cache = "hit" if hit else "miss"
        media = clip.media if clip else MediaInputs()
        words = self._words(chat, clip)
        messages = build_prompt(conversation, self.processor, task, media.modalities, words)
        # Evidence for a channel the request lacks is written null and the explanation may not describe
        # it, whether the turn is the task or a question about the clip (as AffectPipeline asks them).
        absent = absent_channels(media.modalities, bool(words))
        keys = self.processor.prompt.task_keys(task) if task else ()
        meta = CompletionMeta(
            model=str(self.options.model_name), task=task, require_labels="labels" in keys,
            modalities=list(media.modalities), absent=list(absent),
            transcript=transcript_record(chat.transcript, clip.recognised if clip else None), media_cache=cache,
            prompt_tokens=len(self.processor.encode_text(messages)["input_ids"]), streaming=self.options.streaming,
        )
        self._check_context(meta.prompt_tokens, settings.max_new_tokens, chat)
        channel = TokenChannel(asyncio.get_running_loop(), self.processor.tokenizer)
        return Job(GenerationRequest(messages, media, absent, chat.cache_salt), settings, channel, stop_at_eos=not chat.ignore_eos), meta

    def _check_context(self, prompt_tokens: int, budget: int, chat: ChatCompletionRequest) -> None:
        """Refuse a prompt that, with its token budget, does not fit the LLM's context (400, as OpenAI's
        ``context_length_exceeded``): past it the model's positions mean nothing, and one long prompt
        would hold up every request batched with it."""
        if fits_context(self.context_tokens, prompt_tokens, budget):
            return
        field = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"this model's context is {self.context_tokens} tokens; the messages and media take "
                            f"{prompt_tokens} and {field} asks for {budget} more: shorten the messages or lower "
                            f"{field}", "messages", "context_length_exceeded")

    @staticmethod
    def _words(chat: ChatCompletionRequest, clip: Clip | None) -> str | None:
        if chat.transcript is not None:
            return chat.transcript or None
        recognised = clip.recognised if clip else None
        return recognised.text or None if recognised else None

    async def _complete(self, channel: TokenChannel, meta: CompletionMeta, as_json: bool,
                        request: Request) -> Response:
        collect = asyncio.ensure_future(_collect(channel))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not collect.done():  # nobody is left to answer
            channel.cancel()
            collect.cancel()
            return Response(status_code=499)
        text, reason = collect.result()
        return JSONResponse(completion_body(text, reason, channel.tokens, meta, as_json, channel.cached_tokens))

    async def _events(self, channel: TokenChannel, meta: CompletionMeta,
                      include_usage: bool) -> AsyncIterator[dict[str, str]]:
        ended = False
        try:
            yield _event(chunk_body(meta, {"role": "assistant", "content": ""}))
            pieces: list[str] = []
            async for kind, value in channel.events():
                if kind == "text":
                    pieces.append(value)
                    yield _event(chunk_body(meta, {"content": value}))
                    continue
                ended = True
                if kind == "error":
                    yield _event(ApiError(500, value, None, "generation_failed").body())
                else:
                    yield _event(chunk_body(meta, {}, value, affect=affect_record("".join(pieces), meta)))
                    if include_usage:
                        yield _event(usage_chunk(meta, channel.tokens, channel.cached_tokens))
            yield {"data": "[DONE]"}
        finally:
            if not ended:  # the client left mid-stream: its row leaves the batch
                channel.cancel()


def _event(body: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(body, ensure_ascii=False)}


async def _collect(channel: TokenChannel) -> tuple[str, str]:
    """The whole text and finish reason of a job.

    Raises:
        ApiError: 500 when its batch failed.
    """
    pieces = []
    async for kind, value in channel.events():
        if kind == "text":
            pieces.append(value)
        elif kind == "error":
            raise ApiError(500, value, None, "generation_failed")
        else:
            return "".join(pieces), value
    raise ApiError(500, "the generation ended without an answer", None, "generation_failed")
