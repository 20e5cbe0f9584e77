"""The batching thread in-process: admission, cancellation before a batch, failed batches, whole answers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.hf_backend import HFBackend
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec
from affect_llm.serving.scheduler import (
    Job,
    QueueFull,
    Scheduler,
    TokenChannel,
    hf_runner,
    whole_answer_runner,
)

SPEC = ModelSpec(llm="tiny:llm", audio_encoder="tiny:whisper", audio_window_seconds=4.0, num_audio_tokens=4)


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    model, processor = build_model(SPEC, seed=0)
    return HFBackend(model, processor)


def request(backend: HFBackend, seconds: float, question: str) -> GenerationRequest:
    audio = (0.1 * np.random.default_rng(int(seconds * 10)).standard_normal(int(16_000 * seconds))).astype(np.float32)
    media = backend.processor.prepare_media(audio=audio)
    return GenerationRequest(backend.processor.build_messages("reason", media.modalities, question=question), media)


async def answer(scheduler: Scheduler, job: Job) -> tuple[list[str], str]:
    scheduler.admit()
    scheduler.submit(job)
    pieces, end = [], ""
    async for kind, value in job.channel.events():
        if kind == "text":
            pieces.append(value)
        else:
            end = f"{kind}:{value}"
    return pieces, end


def job(backend: HFBackend, req: GenerationRequest, tokens: int) -> Job:
    channel = TokenChannel(asyncio.get_running_loop(), backend.processor.tokenizer)
    return Job(req, DecodingSettings(max_new_tokens=tokens), channel, stop_at_eos=False)


def test_whole_answer_runner_gives_each_answer_in_one_piece(backend: HFBackend) -> None:
    requests = [request(backend, 1.0, "Why?"), request(backend, 2.0, "How so?"), request(backend, 0.5, "Well?")]
    budgets = [6, 6, 3]
    expected = [backend.generate([r], DecodingSettings(max_new_tokens=n))[0] for r, n in zip(requests, budgets, strict=True)]

    async def run() -> list:
        scheduler = Scheduler(whole_answer_runner(backend), max_batch=8, window_s=0.2)
        results = await asyncio.gather(*(answer(scheduler, job(backend, r, n)) for r, n in zip(requests, budgets, strict=True)))
        scheduler.close()
        return results, scheduler.stats

    results, stats = asyncio.run(run())
    assert [pieces for pieces, _ in results] == [[text] for text in expected]
    assert [end for _, end in results] == ["end:length"] * 3 and stats.largest_batch == 3


def test_admission_is_bounded_and_withdrawals_free_a_place() -> None:
    scheduler = Scheduler(lambda jobs: 0, max_batch=1, window_s=0.0, max_queue=2)
    scheduler.admit()
    scheduler.admit()
    with pytest.raises(QueueFull) as full:
        scheduler.admit()
    assert full.value.retry_after >= 1 and scheduler.stats.rejected == 1
    scheduler.withdraw()
    scheduler.admit()
    scheduler.close()


def test_a_request_cancelled_while_waiting_never_runs(backend: HFBackend) -> None:
    ran: list[int] = []

    async def run() -> tuple:
        scheduler = Scheduler(lambda jobs: ran.append(len(jobs)) or 0, max_batch=4, window_s=0.05)
        gone = job(backend, request(backend, 1.0, "?"), 4)
        gone.channel.cancel()
        result = await answer(scheduler, gone)
        scheduler.close()
        return result, scheduler.stats

    (pieces, end), stats = asyncio.run(run())
    assert pieces == [] and end == "end:cancelled" and ran == [] and stats.cancelled == 1


def test_a_failed_batch_fails_its_requests_and_the_next_batch_runs(backend: HFBackend) -> None:
    runner = hf_runner(backend)
    calls = []

    def flaky(jobs: list[Job]) -> int:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return runner(jobs)

    async def run() -> tuple:
        scheduler = Scheduler(flaky, max_batch=4, window_s=0.0)
        first = await answer(scheduler, job(backend, request(backend, 1.0, "?"), 4))
        second = await answer(scheduler, job(backend, request(backend, 1.0, "?"), 4))
        scheduler.close()
        return first, second, scheduler.stats

    first, second, stats = asyncio.run(run())
    assert first == ([], "error:generation failed: RuntimeError: out of memory")
    assert second[1] == "end:length" and "".join(second[0])
    assert stats.failed == 1 and stats.completed == 1


def test_a_batch_that_fails_before_any_token_reruns_each_request_alone(backend: HFBackend) -> None:
    """One request's bad input fails that request, not the others that shared its batch."""
    runner = hf_runner(backend)
    poison = request(backend, 0.5, "poison?")
    calls = []

    def fails_with_poison(jobs: list[Job]) -> int:
        calls.append(len(jobs))
        if any(j.request is poison for j in jobs):
            raise ValueError("Overflow when unpacking long long")
        return runner(jobs)

    async def run() -> tuple:
        scheduler = Scheduler(fails_with_poison, max_batch=4, window_s=0.5)
        jobs = [job(backend, poison, 4), job(backend, request(backend, 1.0, "Why?"), 4)]
        results = await asyncio.gather(*(answer(scheduler, j) for j in jobs))
        scheduler.close()
        return results, scheduler.stats

    (bad, good), stats = asyncio.run(run())
    assert calls == [2, 1, 1]
    assert bad == ([], "error:generation failed: ValueError: Overflow when unpacking long long")
    assert good[1] == "end:length" and "".join(good[0])
    assert stats.failed == 1 and stats.completed == 1
