"""A stand-in OpenAI-compatible chat server on the loopback interface, for tests and benchmarks.

Run it as a real process; it prints its URL on the first line of stdout:

    python tests/openai_stub.py --delay 0.1          # -> http://127.0.0.1:PORT/v1

``POST /v1/chat/completions`` answers after ``--delay`` seconds. By default the answer is derived
from the request alone, so every run gives the same answers:

- a prompt asking for ``{"score": ...}``: a score 1-10 from a hash of the user message;
- a prompt asking to group emotions: every word of the last ``Input: [...]`` in its own group;
- a prompt asking for a sentiment: ``positive`` / ``negative`` / ``neutral`` from the hash;
- anything else: the user message echoed.

Tests can script replies and read what was sent:

- ``POST /stub/reset`` with ``{"replies": [...], "delay": s}`` clears the log and queues replies,
  each ``{"status": 200, "content": "..."}``, ``{"status": 503}``, ``{"sleep": s}`` (answer late)
  or ``{"body": "raw text"}`` (a malformed body);
- ``GET /stub/requests`` returns the request bodies received since the last reset;
- ``GET /stub/stats`` returns ``{"requests": n, "max_in_flight": m}``.

It binds 127.0.0.1 only and stops on SIGTERM / SIGINT or after ``--lifetime`` seconds.
:class:`StubServer` starts it as a child process and wraps the control endpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_INPUT_LIST = re.compile(r"Input:\s*(\[[^\]]*\])\s*Output:\s*$")


def default_content(body: dict[str, Any]) -> str:
    """The deterministic answer to a chat request."""
    messages = body.get("messages") or [{}]
    user = str(messages[-1].get("content", ""))
    digest = int(hashlib.sha256(user.encode("utf-8")).hexdigest(), 16)
    if '"score"' in user:
        return json.dumps({"score": 1 + digest % 10})
    if "group the emotions" in user:
        match = _INPUT_LIST.search(user.strip())
        words = re.findall(r"'([^']*)'", match.group(1)) if match else []
        return json.dumps([[word] for word in words])
    if "sentiment" in user:
        return ("positive", "negative", "neutral")[digest % 3]
    return user


class StubState:
    """Scripted replies, the request log and in-flight counters, shared by handler threads."""

    def __init__(self, delay: float) -> None:
        self.lock = threading.Lock()
        self.delay = delay
        self.replies: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def reset(self, replies: list[dict[str, Any]], delay: float | None) -> None:
        with self.lock:
            self.replies = list(replies)
            self.requests = []
            self.max_in_flight = 0
            if delay is not None:
                self.delay = delay

    def begin(self, body: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.replies.pop(0) if self.replies else None

    def end(self) -> None:
        with self.lock:
            self.in_flight -= 1


def make_handler(state: StubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def _send(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length", 0))
            return json.loads(self.rfile.read(length) or b"{}")

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            with state.lock:
                if self.path == "/stub/requests":
                    payload: Any = state.requests
                elif self.path == "/stub/stats":
                    payload = {"requests": len(state.requests), "max_in_flight": state.max_in_flight}
                else:
                    payload = None
            self._send(200 if payload is not None else 404, json.dumps(payload).encode())

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            body = self._body()
            if self.path == "/stub/reset":
                state.reset(body.get("replies", []), body.get("delay"))
                self._send(200, b"{}")
                return
            if not self.path.endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "unknown path"}}')
                return
            reply = state.begin(body)
            try:
                time.sleep(state.delay + float((reply or {}).get("sleep", 0.0)))
                self._reply(body, reply)
            finally:
                state.end()

        def _reply(self, body: dict[str, Any], reply: dict[str, Any] | None) -> None:
            reply = reply or {}
            if "body" in reply:
                self._send(200, str(reply["body"]).encode())
                return
            status = int(reply.get("status", 200))
            if status != 200:
                error = {"error": {"message": f"stub error {status}", "type": "stub", "code": status}}
                self._send(status, json.dumps(error).encode())
                return
            content = reply.get("content", default_content(body))
            completion = {
                "id": "stub",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "stub"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
            }
            self._send(200, json.dumps(completion).encode())

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def serve(port: int, delay: float, lifetime: float) -> None:
    """Serve until SIGTERM / SIGINT or ``lifetime`` seconds; print the URL first."""
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(StubState(delay)))
    server.daemon_threads = True
    print(f"http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    # Stop from another thread: shutdown() blocks until serve_forever returns.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop.wait(timeout=lifetime)
    server.shutdown()
    server.server_close()


class StubServer:
    """The stub as a child process: ``with StubServer(delay=0.1) as stub: stub.url``.

    Args:
        delay: Seconds before each answer.
        lifetime: The child stops by itself after this many seconds (a safety net).
    """

    def __init__(self, delay: float = 0.0, lifetime: float = 600.0) -> None:
        self.delay, self.lifetime = delay, lifetime
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> StubServer:
        command = [sys.executable, __file__, "--delay", str(self.delay), "--lifetime", str(self.lifetime)]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError(f"stub server did not start (first line {self.url!r})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.root + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def reset(self, replies: list[dict[str, Any]] | tuple = (), delay: float | None = None) -> None:
        """Clear the request log and queue scripted replies."""
        self._call("/stub/reset", {"replies": list(replies), "delay": delay})

    def requests(self) -> list[dict[str, Any]]:
        """Request bodies received since the last reset."""
        return self._call("/stub/requests")

    def stats(self) -> dict[str, int]:
        """``{"requests": n, "max_in_flight": m}`` since the last reset."""
        return self._call("/stub/stats")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in OpenAI-compatible chat server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    serve(args.port, args.delay, args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
