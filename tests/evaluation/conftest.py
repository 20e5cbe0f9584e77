"""Shared fixtures: the stand-in OpenAI-compatible server (tests/openai_stub.py) as a real process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai_stub import StubServer


@pytest.fixture(scope="session")
def stub_process() -> Iterator[StubServer]:
    """One stub server process on 127.0.0.1 for the whole test run."""
    with StubServer(delay=0.0, lifetime=3600.0) as stub:
        yield stub


@pytest.fixture
def openai_stub(stub_process: StubServer) -> StubServer:
    """The stub with an empty request log, no scripted replies and no delay."""
    stub_process.reset([], delay=0.0)
    return stub_process
