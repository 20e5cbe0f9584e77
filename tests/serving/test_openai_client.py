"""The real server process, spoken to with the official ``openai`` client as its users would."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI
from servinghelpers import ANSWER, ANSWER_TEXT, ServerProcess, audio_part, image_part, text_part, video_part

MODEL = "affect-tiny"


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def first_turn(clip_dir: Path, question: str | None = "How does the person feel?") -> list[dict]:
    content = [audio_part(clip_dir / "clip.wav"), image_part(clip_dir / "clip.png")]
    return [{"role": "user", "content": content + ([text_part(question)] if question else [])}]


def test_models_lists_the_served_checkpoint_and_its_streaming(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    card = models[0].model_extra
    assert card["streaming"] == "per token" and card["modalities"] == ["audio", "face"]


def test_audio_image_and_text_get_the_models_answer(client: OpenAI, clip_dir: Path) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=first_turn(clip_dir), max_tokens=120)
    assert completion.choices[0].message.content == ANSWER_TEXT
    assert completion.choices[0].finish_reason == "stop"
    affect = completion.model_extra["affect"]
    assert affect["modalities"] == ["audio", "face"] and affect["task"] is None
    assert affect["answer"]["labels"] == ["happy"] and affect["answer"]["parse_status"] == "ok"
    assert completion.usage.completion_tokens > 10 and completion.usage.prompt_tokens > 20


def test_streaming_gives_the_same_text_token_by_token(client: OpenAI, clip_dir: Path) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=first_turn(clip_dir), max_tokens=120,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == ANSWER_TEXT
    assert len(pieces) > 10  # one piece per token, not the answer at once
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.choices[0].finish_reason == "stop"
    assert final.model_extra["affect"]["answer"]["explanation"] == ANSWER["explanation"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= len(pieces)


def test_json_response_format_returns_the_structured_answer(client: OpenAI, clip_dir: Path) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=first_turn(clip_dir, question=None),
                                                max_tokens=120, response_format={"type": "json_object"})
    answer = json.loads(completion.choices[0].message.content)
    assert answer["labels"] == ANSWER["labels"] and answer["evidence"] == ANSWER["evidence"]
    assert answer["parse_status"] == "ok" and answer["error"] is None
    assert completion.model_extra["affect"]["task"] == "reason"


def test_a_cut_answer_is_reported_unparseable_never_coerced(client: OpenAI, clip_dir: Path) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=first_turn(clip_dir, question=None),
                                                max_tokens=8, response_format={"type": "json_object"})
    answer = json.loads(completion.choices[0].message.content)
    assert completion.choices[0].finish_reason == "length"
    assert answer["labels"] is None and answer["parse_status"] == "unparseable"
    assert "truncated" in answer["error"] and ANSWER_TEXT.startswith(answer["raw"])


def test_multi_turn_reuses_the_decoded_clip(client: OpenAI, server, clip_dir: Path) -> None:
    messages = first_turn(clip_dir)
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=120)
    decoded = server.health()["media"]["decoded"]
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Which channel shows it most clearly?"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
    assert second.model_extra["affect"]["media_cache"] == "hit"
    assert server.health()["media"]["decoded"] == decoded
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    assert second.choices[0].message.content


def test_a_cache_salt_keeps_computed_prompt_prefixes_to_the_requests_that_send_it(client: OpenAI, server,
                                                                                   clip_dir: Path) -> None:
    """usage.prompt_tokens_details.cached_tokens counts the prompt tokens an earlier request computed."""
    salt, other = f"tenant-{uuid.uuid4().hex}", f"tenant-{uuid.uuid4().hex}"

    def ask(cache_salt: str, question: str):
        return client.chat.completions.create(model=MODEL, messages=first_turn(clip_dir, question), max_tokens=120,
                                              extra_body={"cache_salt": cache_salt})

    first = ask(salt, "How does the person feel?")
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # nothing kept under a new salt yet
    second = ask(salt, "What does the voice say about it?")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 8 <= cached < second.usage.prompt_tokens  # the system prompt and header, not the clip's own tokens
    assert second.choices[0].message.content == first.choices[0].message.content == ANSWER_TEXT
    assert ask(other, "How does the person feel?").usage.prompt_tokens_details.cached_tokens == 0
    reused = server.health()["prefix_cache"]["reused_tokens"]
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=first_turn(clip_dir), max_tokens=120, stream=True,
        stream_options={"include_usage": True}, extra_body={"cache_salt": other}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == cached
    assert server.health()["prefix_cache"]["reused_tokens"] == reused + cached


def test_without_prefix_caching_every_prompt_is_computed_whole(answering_checkpoint: Path, clip_dir: Path) -> None:
    with ServerProcess(answering_checkpoint, "--no-asr", "--served-model-name", MODEL, "--no-prefix-caching") as server:
        client = OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)
        answers = [client.chat.completions.create(model=MODEL, messages=first_turn(clip_dir), max_tokens=120)
                   for _ in range(2)]
        assert server.health()["prefix_cache"] is None
    assert [a.usage.prompt_tokens_details.cached_tokens for a in answers] == [0, 0]
    assert [a.choices[0].message.content for a in answers] == [ANSWER_TEXT, ANSWER_TEXT]


def test_a_video_clip_is_read_for_its_faces_and_its_sound(client: OpenAI, clip_dir: Path) -> None:
    messages = [{"role": "user", "content": [video_part(clip_dir / "clip.mp4")]}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=120)
    assert completion.model_extra["affect"]["modalities"] == ["audio", "face"]
    assert completion.model_extra["affect"]["answer"]["labels"] == ["happy"]


def test_a_file_url_inside_the_allowed_folder_is_read(client: OpenAI, clip_dir: Path) -> None:
    messages = [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": (clip_dir / "clip.wav").as_uri()}}]}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=120)
    assert completion.model_extra["affect"]["modalities"] == ["audio"]


def test_a_transcript_from_the_client_is_the_words_channel(client: OpenAI, clip_dir: Path) -> None:
    said = (clip_dir / "transcript.txt").read_text()
    completion = client.chat.completions.create(model=MODEL, messages=first_turn(clip_dir), max_tokens=4,
                                                extra_body={"transcript": said})
    assert completion.model_extra["affect"]["transcript"] == {"text": said, "source": "client", "recognised": False}


def test_concurrent_requests_are_batched_with_the_same_greedy_answers(client: OpenAI, server, clip_dir: Path) -> None:
    requests = [
        {"messages": first_turn(clip_dir, q), "max_tokens": n}
        for q, n in (("How does the person feel?", 30), ("Why?", 12), (None, 40), ("What do you hear?", 25))
    ] * 2
    requests += [{"messages": [{"role": "user", "content": [video_part(clip_dir / "clip.mp4")]}], "max_tokens": 16}]

    def ask(request: dict) -> str:
        return client.chat.completions.create(model=MODEL, **request).choices[0].message.content

    alone = [ask(r) for r in requests]
    batches_before = server.health()["scheduler"]["batches"]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    scheduler = server.health()["scheduler"]
    assert together == alone
    assert scheduler["largest_batch"] > 1 and scheduler["batches"] - batches_before < len(requests)
