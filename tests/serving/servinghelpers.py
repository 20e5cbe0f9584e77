"""``affect-llm serve`` as a real child process, and the request pieces the serving tests send."""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

URL_PREFIX = "affect-llm serve: "
# The one answer the tests' checkpoint was trained to give (see conftest.answering_checkpoint).
# In the order of prompt v5's reason task: evidence, explanation, labels.
ANSWER = {"evidence": {"audio": "high-pitched fast voice", "video": "the face smiles", "text": None},
          "explanation": "The voice is high-pitched and fast; the face smiles.", "labels": ["happy"]}
ANSWER_TEXT = json.dumps(ANSWER)


class ServerProcess:
    """``python -m affect_llm.cli.main serve --model CKPT --port 0 ...`` in a child process.

    ``with ServerProcess(ckpt, "--no-asr") as server: server.url`` waits for the URL line and for
    ``/health`` to answer; leaving the block terminates the child (by its own pid).

    The tests' checkpoint gives one fixed answer whatever the clip, a face description included, so
    servers start with ``--no-null-absent-evidence --no-guard-absent-explanation`` unless
    ``null_absent_evidence`` (both rules on): the tests of the machinery compare that answer exactly.
    """

    def __init__(self, checkpoint: Path, *args: str, startup_s: float = 180.0, threads: int = 1,
                 null_absent_evidence: bool = False) -> None:
        guard = () if null_absent_evidence else ("--no-null-absent-evidence", "--no-guard-absent-explanation")
        self.command = [sys.executable, "-m", "affect_llm.cli.main", "serve", "--model", str(checkpoint),
                        "--port", "0", "--log-level", "warning", *guard, *args]
        self.startup_s = startup_s
        self.threads = threads  # torch threads of the server (tests keep to one core: others share the machine)
        self.url = ""
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process: subprocess.Popen[str] | None = None

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.startup_s
        try:
            self.url = self._wait_url(deadline)
            self._wait_health(deadline)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_url(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError(f"the server exited before it printed its URL:\n{''.join(self.log)[-3000:]}")
            if line.startswith(URL_PREFIX):
                return line[len(URL_PREFIX):].strip()
        raise TimeoutError(f"no URL line within {self.startup_s} s:\n{''.join(self.log)[-3000:]}")

    def _wait_health(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited while loading:\n{''.join(self.log)[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"/health did not answer within {self.startup_s} s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10.0).json()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def audio_part(path: Path, fmt: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": b64(path), "format": fmt}}


def image_part(path: Path, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64(path)}"}}


def video_part(path: Path, mime: str = "video/mp4") -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{b64(path)}"}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def wait_for(condition: Any, timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
    """Poll ``condition()`` until it returns something truthy; that value, or AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")
