"""Audio without words: the words channel comes from the embedded Whisper, marked as recognised."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from openai import OpenAI
from servinghelpers import ServerProcess, audio_part, video_part

pytestmark = pytest.mark.embedded
MODEL = "affect-tiny"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_speech_without_a_transcript_is_recognised_once(answering_checkpoint: Path, clip_dir: Path) -> None:
    said = (clip_dir / "transcript.txt").read_text()
    with ServerProcess(answering_checkpoint, "--served-model-name", MODEL) as server:
        client = OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=300)
        messages = [{"role": "user", "content": [audio_part(clip_dir / "clip.wav")]}]
        first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        transcript = first.model_extra["affect"]["transcript"]
        assert transcript["recognised"] is True and transcript["source"] == "asr:whisper-base"
        # espeak speech is not always heard word for word ("it so" -> "this show"): most words suffice.
        assert len(words(transcript["text"]) & words(said)) >= len(words(said)) / 2, (transcript, said)
        again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert again.model_extra["affect"]["transcript"] == transcript
        assert server.health()["media"]["recognised"] == 1  # the cached clip keeps its words
        # The prompt holds the recognised words: it is longer than the same clip with none.
        silent = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4,
                                                extra_body={"transcript": ""})
        assert first.usage.prompt_tokens > silent.usage.prompt_tokens
        video = client.chat.completions.create(model=MODEL, max_tokens=4, messages=[
            {"role": "user", "content": [video_part(clip_dir / "clip.mp4")]}])
        assert words(video.model_extra["affect"]["transcript"]["text"]) & words(said)
