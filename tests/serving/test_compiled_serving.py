"""``affect-llm serve --compile``: the decoding step compiled before the server answers, for every batch size.

A real server process and the official ``openai`` client. That no request compiles again is tested in
process (``tests/generation/test_batch_stream.py``), where dynamo's counters can be read.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI
from servinghelpers import ANSWER_TEXT, ServerProcess, audio_part, image_part, text_part


@pytest.mark.slow
def test_compiled_server_gives_a_request_the_same_answer_alone_and_batched(answering_checkpoint: Path,
                                                                             clip_dir: Path) -> None:
    with ServerProcess(answering_checkpoint, "--no-asr", "--compile", "--served-model-name", "affect-tiny",
                       startup_s=600) as server:
        assert any("compiling the decoding step" in line for line in server.log)
        client = OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=300)
        audio_and_face = [audio_part(clip_dir / "clip.wav"), image_part(clip_dir / "clip.png")]

        def ask(question: str | None) -> str:
            content = audio_and_face + ([text_part(question)] if question else [])
            completion = client.chat.completions.create(model="affect-tiny", max_tokens=120,
                                                        messages=[{"role": "user", "content": content}])
            return completion.choices[0].message.content

        # Prompts of three lengths, each alone (batches of one row), then at once (one batch of several).
        questions = ["How does the person feel?", None, "Which emotions are shown?"]
        alone = [ask(q) for q in questions]
        with ThreadPoolExecutor(len(questions)) as pool:
            together = list(pool.map(ask, questions))
        batches = server.health()["scheduler"]
        assert alone[0] == ANSWER_TEXT and together == alone
        assert batches["largest_batch"] >= 2
        assert not any("decoding eagerly" in line for line in server.log)


def test_serve_refuses_compile_with_the_vllm_backend(answering_checkpoint: Path) -> None:
    command = [sys.executable, "-m", "affect_llm.cli.main", "serve", "--model", str(answering_checkpoint),
               "--port", "0", "--backend", "vllm", "--compile"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--compile is for --backend hf" in done.stderr, done.stderr
