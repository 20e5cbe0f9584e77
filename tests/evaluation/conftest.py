"""Shared fixtures: a scripted OpenAI-compatible HTTP server on 127.0.0.1 for judge tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakeOpenAI:
    """Serves scripted replies in order; each reply is (status, content) or ("sleep", seconds)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(json.loads(self.rfile.read(length)))
                kind, value = outer.replies.pop(0) if outer.replies else (200, '{"score": 5}')
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = 200, '{"score": 5}'
                if kind == "raw":
                    body = value.encode()
                    kind = 200
                else:
                    body = json.dumps({"choices": [{"message": {"content": value}}]}).encode()
                try:
                    self.send_response(kind)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai():
    """The :class:`FakeOpenAI` class; use it as a context manager with scripted replies."""
    return FakeOpenAI
