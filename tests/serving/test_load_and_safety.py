"""A client that leaves stops costing compute; a full queue answers 503; keys and binds are safe by default."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from servinghelpers import ServerProcess, audio_part, text_part, wait_for

MODEL = "affect-tiny"


def long_request(clip_dir: Path, tokens: int = 3000) -> dict:
    """A request that decodes its whole budget (``ignore_eos``), long enough to be interrupted (and,
    with its prompt, within the tiny model's context of 8192 tokens)."""
    return {"model": MODEL, "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": [audio_part(clip_dir / "clip.wav"), text_part("Talk.")]}]}


def test_a_client_that_disconnects_stops_its_generation(server, clip_dir: Path) -> None:
    before = server.health()["scheduler"]
    with httpx.stream("POST", f"{server.api}/chat/completions", json=long_request(clip_dir), timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(6):  # the role chunk and a few tokens
            next(lines)
    # The connection is closed: the row leaves its batch at the next step.
    after = wait_for(lambda: (s := server.health()["scheduler"])["cancelled"] > before["cancelled"]
                     and s["running"] == 0 and s)
    assert after["generated_tokens"] - before["generated_tokens"] < 3000
    assert after["completed"] == before["completed"]


def test_a_waiting_client_without_a_stream_that_leaves_is_cancelled_too(server, clip_dir: Path) -> None:
    before = server.health()["scheduler"]
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 2 s and closes the connection
        httpx.post(f"{server.api}/chat/completions", json={**long_request(clip_dir), "stream": False},
                   timeout=httpx.Timeout(60, read=2))
    after = wait_for(lambda: (s := server.health()["scheduler"])["cancelled"] > before["cancelled"]
                     and s["running"] == 0 and s)
    assert after["generated_tokens"] - before["generated_tokens"] < 3000


def test_a_full_queue_answers_503_with_retry_after(answering_checkpoint: Path, clip_dir: Path) -> None:
    with ServerProcess(answering_checkpoint, "--no-asr", "--max-batch", "1", "--max-queue", "1",
                       "--max-tokens-limit", "4000", "--served-model-name", MODEL) as busy:
        occupied, release = threading.Event(), threading.Event()

        def occupy() -> None:  # a long generation holds the only batch slot until released
            with httpx.stream("POST", f"{busy.api}/chat/completions", json=long_request(clip_dir, 4000),
                              timeout=120) as response:
                for _ in response.iter_lines():
                    occupied.set()
                    if release.is_set():
                        return

        holder = threading.Thread(target=occupy)
        holder.start()
        assert occupied.wait(60)
        waiter = threading.Thread(target=httpx.post, args=(f"{busy.api}/chat/completions",),
                                  kwargs={"json": {**long_request(clip_dir, 4), "stream": False}, "timeout": 120})
        waiter.start()
        wait_for(lambda: busy.health()["scheduler"]["waiting"] == 1)
        refused = httpx.post(f"{busy.api}/chat/completions", json={**long_request(clip_dir, 4), "stream": False})
        release.set()
        holder.join(120)
        waiter.join(120)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        client = OpenAI(base_url=busy.api, api_key="unused", max_retries=0)
        assert client.chat.completions.create(model=MODEL, max_tokens=4, messages=[
            {"role": "user", "content": "Still there?"}]).choices[0].finish_reason


def test_an_api_key_is_required_when_set(answering_checkpoint: Path) -> None:
    with ServerProcess(answering_checkpoint, "--no-asr", "--api-key", "s3cret", "--served-model-name", MODEL) as keyed:
        with pytest.raises(openai.AuthenticationError, match="API key"):
            OpenAI(base_url=keyed.api, api_key="wrong", max_retries=0).models.list()
        assert httpx.get(f"{keyed.api}/models").status_code == 401
        client = OpenAI(base_url=keyed.api, api_key="s3cret", max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL]
        assert keyed.health()["auth_required"] is True  # the page asks for the key


def test_binding_beyond_loopback_without_a_key_is_refused(answering_checkpoint: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "serve", "--model", str(answering_checkpoint),
                           "--host", "0.0.0.0", "--no-asr"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 2 and "needs --api-key" in done.stderr
