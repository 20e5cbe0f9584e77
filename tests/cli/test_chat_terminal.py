"""``affect-llm chat`` in a real terminal: a pty drives the console script like a person would."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affect_llm.loading.build import build_model
from affect_llm.loading.checkpoint import save_checkpoint
from affect_llm.loading.spec import ModelSpec

PROMPT = b"you> "
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def chat_assets(tmp_path_factory) -> dict[str, Path]:
    import cv2
    import soundfile

    folder = tmp_path_factory.mktemp("chat")
    spec = ModelSpec(
        llm="tiny:llm",
        audio_encoder="tiny:whisper",
        face_encoder="tiny:fer",
        audio_window_seconds=4.0,
        num_audio_tokens=4,
        num_face_tokens=2,
    )
    model, processor = build_model(spec, seed=0)
    checkpoint = save_checkpoint(model, processor, folder / "ckpt")
    seconds = np.arange(16_000, dtype=np.float32) / 16_000
    soundfile.write(folder / "voice.wav", 0.3 * np.sin(2 * np.pi * 220 * seconds), 16_000)
    from skimage import data

    # A real face (a photo without one has no face channel: nothing is attached).
    cv2.imwrite(str(folder / "face.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return {"checkpoint": checkpoint, "audio": folder / "voice.wav", "image": folder / "face.png"}


class Terminal:
    """A child process on the slave side of a pty; reads and writes on the master side."""

    def __init__(self, command: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            command,
            stdin=slave,
            stdout=slave,
            stderr=slave,  # input() writes its prompt to stderr on a terminal
            close_fds=True,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def read_until(self, marker: bytes, timeout: float = 60.0) -> bytes:
        """Everything read up to and including ``marker`` (fails on timeout or exit)."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} within {timeout} s; screen so far: {self.seen[-400:]!r}"
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"the chat ended before {marker!r}; screen: {self.seen[-400:]!r}"
                self.seen += chunk
        head, _, self.seen = self.seen.partition(marker)
        return ANSI.sub(b"", head + marker)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int:
        code = self.process.wait(timeout=30)
        os.close(self.master)
        return code

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:  # a failed assertion: do not leave the chat running
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def test_chat_session_in_a_pty(chat_assets):
    command = [
        sys.executable,
        "-m",
        "affect_llm.cli.main",
        "chat",
        "--model",
        str(chat_assets["checkpoint"]),
        "--audio",
        str(chat_assets["audio"]),
        "--max-new-tokens",
        "6",
    ]
    with Terminal(command) as term:
        banner = term.read_until(PROMPT)
        assert b"[clip attached: audio; no words]" in banner
        assert b"/attach" in banner and b"/quit" in banner

        term.type("How does the speaker feel?")
        reply = term.read_until(PROMPT)
        assert b"How does the speaker feel?" in reply  # the terminal echoes what was typed
        answer = reply.split(b"model> ", 1)[1].rsplit(PROMPT, 1)[0]
        assert answer.strip(), f"no streamed text after 'model> ': {reply!r}"

        term.type(f"/attach image={chat_assets['image']}")
        assert b"[clip attached: face; no words]" in term.read_until(PROMPT)

        term.type("/atach image=x.png")  # a mistyped command is not a question for the model
        mistyped = term.read_until(PROMPT)
        assert b"[error] unknown command /atach" in mistyped and b"model> " not in mistyped

        term.type("/attach image=/no/such/face.png")
        failed = term.read_until(PROMPT)
        assert b"[error]" in failed and b"face.png" in failed and b"the previous clip stays attached" in failed

        # A transcript is a sentence: its spaces are part of it.
        term.type(f"/attach image={chat_assets['image']} transcript=I am so happy today")
        assert b"[clip attached: face; words]" in term.read_until(PROMPT)

        term.type("/reset")
        assert b"[history cleared]" in term.read_until(PROMPT)

        term.type("And now?")
        assert b"model> " in term.read_until(PROMPT)

        term.type("/quit")
        assert term.close() == 0


def test_ctrl_c_stops_the_answer_and_not_the_chat(chat_assets):
    command = [sys.executable, "-m", "affect_llm.cli.main", "chat", "--model", str(chat_assets["checkpoint"]),
               "--audio", str(chat_assets["audio"]), "--max-new-tokens", "2000"]
    with Terminal(command) as term:
        term.read_until(PROMPT, timeout=180)
        term.type("/attach audio=")  # an empty value names no file: refused, the clip stays
        assert b"[error] audio= names no file" in term.read_until(PROMPT)
        # The tiny random model does not stop on its own within 2,000 tokens (about 90 s here).
        term.type("How does the speaker feel?")
        term.read_until(b"model> ")
        time.sleep(1.0)
        os.killpg(term.process.pid, signal.SIGINT)
        stopped = term.read_until(PROMPT)
        assert b"[stopped; the answer is not kept in the history]" in stopped, stopped
        # At the prompt: the line is dropped, the chat goes on. readline reads keys in C: a signal that
        # lands before it waits for one is seen at the next key, so one empty line follows it.
        time.sleep(1.0)
        os.killpg(term.process.pid, signal.SIGINT)
        time.sleep(2.0)
        term.type("")
        assert b"[/quit or Ctrl-D ends the chat]" in term.read_until(PROMPT)
        term.type("/quit")
        assert term.close() == 0


def _answers_after_reset(chat_assets, *options: str) -> list[bytes]:
    """The chat's answers to one question asked twice, the history cleared between them."""
    command = [sys.executable, "-m", "affect_llm.cli.main", "chat", "--model", str(chat_assets["checkpoint"]),
               "--audio", str(chat_assets["audio"]), "--max-new-tokens", "8", *options]
    answers = []
    with Terminal(command) as term:
        term.read_until(PROMPT, timeout=180)
        for _ in range(2):
            term.type("How does the speaker feel?")
            answers.append(term.read_until(PROMPT).split(b"model> ", 1)[1].rsplit(PROMPT, 1)[0].strip())
            term.type("/reset")
            term.read_until(PROMPT)
        term.type("/quit")
        assert term.close() == 0
    assert all(answers), answers
    return answers


def test_chat_samples_alike_with_a_seed_and_anew_without_one(chat_assets):
    # The tiny random model's next-token distribution is nearly flat over its whole vocabulary: eight
    # tokens drawn twice without a shared seed coincide with a vanishing chance.
    seeded = _answers_after_reset(chat_assets, "--sample", "--temperature", "1.5", "--top-p", "1", "--seed", "3")
    assert seeded[0] == seeded[1]
    unseeded = _answers_after_reset(chat_assets, "--sample", "--temperature", "1.5", "--top-p", "1")
    assert unseeded[0] != unseeded[1]
    greedy = _answers_after_reset(chat_assets)
    assert greedy[0] == greedy[1] and greedy[0] != seeded[0]


@pytest.mark.parametrize("command", ["chat", "explain"])
@pytest.mark.parametrize(("option", "value", "reason"), [("--temperature", "0", "must be above 0, got 0"),
                                                       ("--top-p", "1.5", "must be above 0 and at most 1, got 1.5"),
                                                       ("--temperature", "warm", "expected a number, got 'warm'")])
def test_sampling_options_that_mean_nothing_are_refused_before_loading(command, option, value, reason, tmp_path):
    extra = ["manifest.jsonl", "--out", str(tmp_path / "out.jsonl")] if command == "explain" else []
    done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", command, *extra, "--model",
                           str(tmp_path / "no-checkpoint"), "--sample", option, value],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and f"{option}: {reason}" in done.stderr, done.stderr


def test_chat_refuses_an_empty_token_budget(chat_assets):
    done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "chat", "--model", str(chat_assets["checkpoint"]),
                           "--max-new-tokens", "0"], input="hi\n", capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2 and "--max-new-tokens: must be at least 1, got 0" in done.stderr, done.stderr


def test_chat_on_a_missing_clip_stops_with_exit_code_2(chat_assets, tmp_path):
    """The clip named on the command line is what the chat is about: without it there is no chat."""
    done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "chat", "--model", str(chat_assets["checkpoint"]),
                           "--video", str(tmp_path / "nosuch.mp4")], input="hi\n", capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nosuch.mp4" in done.stderr.strip().splitlines()[-1] and "model>" not in done.stdout


def test_attach_reads_values_with_spaces_and_refuses_unknown_fields():
    from affect_llm.cli.chat import parse_attach

    assert parse_attach(" video=my clips/a.mp4 transcript=I am fine, thanks") == {
        "video": "my clips/a.mp4", "transcript": "I am fine, thanks"}
    assert parse_attach(' audio="b c.wav"') == {"audio": "b c.wav"}
    assert parse_attach(" transcript=x=1 means nothing") == {"transcript": "x=1 means nothing"}
    for bad, word in ((" vide=a.mp4", "vide=a.mp4"), (" video=a.mp4 vide=b.mp4", "vide=b.mp4"), ("", "")):
        with pytest.raises(ValueError, match=f"cannot read '{word}'"):
            parse_attach(bad)


def test_a_compiled_chat_compiles_before_its_first_turn_and_answers_alike(chat_assets):
    """``--compile``: the step (and its drafted graph) compiles before the first prompt, so no turn stops
    partway to compile; dynamo logs every compile it starts (``TORCH_LOGS=dynamo``: "start tracing"), which
    ``--verbose`` shows on the terminal."""
    command = [sys.executable, "-m", "affect_llm.cli.main", "chat", "--model", str(chat_assets["checkpoint"]),
               "--audio", str(chat_assets["audio"]), "--max-new-tokens", "8", "--compile", "--verbose"]
    env_before = os.environ.get("TORCH_LOGS")
    os.environ["TORCH_LOGS"] = "dynamo"
    try:
        term = Terminal(command)
    finally:
        if env_before is None:
            os.environ.pop("TORCH_LOGS")
        else:
            os.environ["TORCH_LOGS"] = env_before
    with term:
        startup = term.read_until(PROMPT, timeout=900)
        assert startup.index(b"[compiling the decoding step") < startup.index(b"start tracing")
        assert startup.rindex(b"start tracing") < startup.index(b"affect-llm chat (")
        answers = []
        for _ in range(2):
            term.type("How does the speaker feel?")
            turn = term.read_until(PROMPT, timeout=120)
            assert b"start tracing" not in turn, turn  # nothing compiled during the answer
            answers.append(turn.split(b"model> ", 1)[1].rsplit(PROMPT, 1)[0].strip())
            term.type("/reset")
            term.read_until(PROMPT)
        term.type("/quit")
        assert term.close() == 0
    assert answers == _answers_after_reset(chat_assets)  # the same greedy answers as the eager chat
