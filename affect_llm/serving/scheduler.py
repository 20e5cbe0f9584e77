"""Dynamic batching: requests that arrive together are generated together, each streaming its own tokens.

One generation thread takes the first waiting request, waits a short window for more (up to the
largest batch; longer, within bounds, while admitted requests are still reading their media), and
decodes them as one batch. With the HF backend every token reaches its request
as soon as it is chosen (:func:`affect_llm.generation.batch_stream.stream_batch`), rows leave the
batch as they end, and a request whose client went away is dropped at the next step. With the vLLM
backend the engine returns whole answers, so each request gets its answer in one piece.

Admission is bounded: at most ``max_queue`` requests wait for a batch (media being decoded count);
one more is refused at once with :class:`QueueFull` (the server answers 503 with ``Retry-After``)
instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from affect_llm.generation.backend import DecodingSettings, GenerationBackend, GenerationRequest
from affect_llm.generation.batch_stream import BatchItem, IncrementalDetokenizer

if TYPE_CHECKING:
    from affect_llm.generation.hf_backend import HFBackend

logger = logging.getLogger(__name__)
# A batch waits up to this many windows for requests admitted but still reading their media: clients
# that all finished together send their next requests together, and a batch should take them all.
PREPARING_WAIT = 10


class QueueFull(Exception):
    """No room for another waiting request; ``retry_after`` seconds is a fair wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class TokenChannel:
    """One request's tokens, from the generation thread to the request's coroutine.

    Implements :class:`affect_llm.generation.batch_stream.TokenSink`. Events on :attr:`queue`:
    ``("text", piece)``, then ``("end", finish_reason)`` or ``("error", message)``.

    Args:
        loop: The event loop of the request.
        tokenizer: Decodes the token ids into text as they come.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tokenizer: Any) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.tokens = 0
        self.cached_tokens = 0  # prompt tokens loaded from kept prefixes (set before the first token)
        self._cancelled = threading.Event()

    def _send(self, kind: str, value: str) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed (server shutting down): nobody listens
            self._cancelled.set()

    def put(self, token_id: int) -> None:
        self.tokens += 1
        piece = self.detokenizer.push(token_id)
        if piece:
            self._send("text", piece)

    def prompt_cached(self, tokens: int) -> None:
        self.cached_tokens = tokens

    def put_text(self, text: str, tokens: int) -> None:
        """A whole answer at once (engines that do not stream)."""
        self.tokens += tokens
        self._send("text", text)

    def end(self, reason: str) -> None:
        rest = self.detokenizer.flush()
        if rest:
            self._send("text", rest)
        self._send("end", reason)

    def fail(self, message: str) -> None:
        self._send("error", message)

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """The client left: the request stops costing compute at the next step (or never starts)."""
        self._cancelled.set()

    async def events(self) -> AsyncIterator[tuple[str, str]]:
        """Text pieces, then one closing event."""
        while True:
            kind, value = await self.queue.get()
            yield kind, value
            if kind != "text":
                return


@dataclass
class Job:
    """A request ready to generate: prompt, media, decoding, and where its tokens go."""

    request: GenerationRequest
    settings: DecodingSettings
    channel: TokenChannel
    stop_at_eos: bool = True


@dataclass
class SchedulerStats:
    """Counters for ``/health`` and the load benchmark."""

    waiting: int = 0
    running: int = 0
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0
    generated_tokens: int = 0
    row_steps: int = 0
    batch_seconds: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


BatchRunner = Callable[[list[Job]], int]


def hf_runner(backend: HFBackend, compile: bool = False) -> BatchRunner:
    """Batches through :func:`stream_batch`: tokens stream, finished and cancelled rows leave (with
    ``compile``, the compiled step keeps them to the batch's end, their tokens no longer sent)."""

    def run(jobs: list[Job]) -> int:
        items = [BatchItem(j.request, j.settings, j.channel, j.stop_at_eos) for j in jobs]
        return backend.decode(items, compile).row_steps

    return run


def whole_answer_runner(backend: GenerationBackend) -> BatchRunner:
    """Batches through ``backend.generate`` (vLLM): one batch per decoding setting, whole answers."""

    def run(jobs: list[Job]) -> int:
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault(tuple(sorted(job.settings.as_dict().items())), []).append(job)
        for group in groups.values():
            texts = backend.generate([j.request for j in group], group[0].settings)
            for job, text in zip(group, texts, strict=True):
                tokens = len(backend.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
                job.channel.put_text(text, tokens)
                job.channel.end("length" if tokens >= job.settings.max_new_tokens else "stop")
        return 0

    return run


@dataclass
class Scheduler:
    """The generation thread and its bounded queue.

    Args:
        run_batch: Generates one batch (:func:`hf_runner` or :func:`whole_answer_runner`).
        max_batch: Most requests generated together.
        window_s: How long the first request of a batch waits for others.
        max_queue: Most requests waiting for a batch; beyond it :meth:`admit` raises ``QueueFull``.
    """

    run_batch: BatchRunner
    max_batch: int = 32
    window_s: float = 0.03
    max_queue: int = 128
    stats: SchedulerStats = field(default_factory=SchedulerStats)

    def __post_init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="affect-generate", daemon=True)
        self._thread.start()

    def admit(self) -> None:
        """Count a new request as waiting, or refuse it.

        Raises:
            QueueFull: When ``max_queue`` requests already wait.
        """
        with self._lock:
            if self.stats.waiting >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(max(1, math.ceil(self.stats.batch_seconds)))
            self.stats.waiting += 1

    def withdraw(self) -> None:
        """An admitted request that will not be submitted (bad media, a client gone)."""
        with self._lock:
            self.stats.waiting -= 1

    def submit(self, job: Job) -> None:
        """Queue an admitted request for the next batch."""
        self._queue.put(job)

    def close(self) -> None:
        """Stop taking batches; the batch in flight may finish (the thread is a daemon: exit never waits long)."""
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _preparing(self, taken: int) -> bool:
        """Whether admitted requests are still reading their media (on their way to the queue)."""
        return self.stats.waiting - taken - self._queue.qsize() > 0

    def _collect(self, first: Job) -> list[Job]:
        """The first job and those that arrive within the window (longer while others are on their way)."""
        batch = [first]
        start = time.monotonic()
        while len(batch) < self.max_batch:
            limit = self.window_s * (PREPARING_WAIT if self._preparing(len(batch)) else 1)
            remaining = start + limit - time.monotonic()
            if remaining <= 0:
                break
            try:
                job = self._queue.get(timeout=min(remaining, self.window_s))
            except queue.Empty:
                continue
            if job is None:  # closing: put the sentinel back for the loop
                self._queue.put(None)
                break
            batch.append(job)
        with self._lock:
            self.stats.waiting -= len(batch)
        return batch

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._collect(first)
            live = [job for job in batch if not job.channel.cancelled()]
            for job in batch:
                if job.channel.cancelled():
                    job.channel.end("cancelled")
            self.stats.cancelled += len(batch) - len(live)
            if live:
                self._run(live)

    def _generate(self, jobs: list[Job]) -> None:
        try:
            self.stats.row_steps += self.run_batch(jobs)
        except Exception as error:  # a failed batch fails its requests, never the server
            if len(jobs) > 1 and not any(job.channel.tokens for job in jobs):
                # Nothing was sent yet: each request runs alone, so that one request's bad input fails
                # that request only, not the others that happened to share its batch.
                logger.warning("a batch of %d requests failed (%s: %s); each runs alone", len(jobs),
                               type(error).__name__, error)
                for job in jobs:
                    self._generate([job])
                return
            logger.exception("a batch of %d requests failed", len(jobs))
            for job in jobs:
                job.channel.fail(f"generation failed: {type(error).__name__}: {error}")
            self.stats.failed += len(jobs)
        else:
            cancelled = sum(job.channel.cancelled() for job in jobs)
            self.stats.cancelled += cancelled
            self.stats.completed += len(jobs) - cancelled

    def _run(self, jobs: list[Job]) -> None:
        started = time.monotonic()
        self.stats.running = len(jobs)
        try:
            self._generate(jobs)
        finally:
            self.stats.running = 0
        elapsed = time.monotonic() - started
        self.stats.batches += 1
        self.stats.rows += len(jobs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        self.stats.generated_tokens += sum(job.channel.tokens for job in jobs)
        # A smoothed batch time: what a refused client is told to wait.
        self.stats.batch_seconds = 0.7 * self.stats.batch_seconds + 0.3 * elapsed
