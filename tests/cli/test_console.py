"""Library noise goes to the run's log, progress and this package's messages stay on the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Every kind of noise a command meets, made in a fresh process whose stderr is a pipe (a real fd 2).
NOISY = """
import logging, os, sys, warnings
from pathlib import Path
import transformers
from affect_llm.cli.console import Console

with Console(Path(sys.argv[1]), verbose=sys.argv[2] == "verbose") as console:
    warnings.warn("librosa-style deprecation", FutureWarning)
    transformers.logging.get_logger("transformers.modeling_utils").warning("transformers says so")
    logging.getLogger("peft.tuners").warning("peft says so")
    os.write(2, b"[mov @ 0x1] moov atom not found (from C)\\n")
    logging.getLogger("affect_llm.features").warning("skipping clip7: too short")
    print("explain: 50%|#####     | 1/2", file=sys.stderr)
print("after: the terminal is back", file=sys.stderr)
os.write(2, b"after: fd 2 is back\\n")
"""
NOISE = ("librosa-style deprecation", "transformers says so", "peft says so", "moov atom not found")
KEPT = ("skipping clip7: too short", "explain: 50%", "after: the terminal is back", "after: fd 2 is back")


def _run(tmp_path: Path, mode: str) -> tuple[str, str]:
    log = tmp_path / f"{mode}.log"
    # The suite quiets transformers (tests/conftest.py); a user's run does not.
    env = {key: value for key, value in os.environ.items() if key != "TRANSFORMERS_VERBOSITY"}
    proc = subprocess.run([sys.executable, "-c", NOISY, str(log), mode], capture_output=True, text=True,
                          timeout=120, check=True, env=env)
    return proc.stderr, log.read_text()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return _run(tmp_path_factory.mktemp("quiet"), "quiet")


def test_library_noise_goes_to_the_log_only(quiet: tuple[str, str]) -> None:
    terminal, log = quiet
    for text in NOISE:
        assert text not in terminal and text in log, text


def test_progress_and_own_messages_stay_on_the_terminal(quiet: tuple[str, str]) -> None:
    terminal, log = quiet
    for text in KEPT:
        assert text in terminal, text
    assert "skipping clip7" in log  # and the log keeps them too


def test_verbose_shows_everything(tmp_path: Path) -> None:
    terminal, _ = _run(tmp_path, "verbose")
    for text in NOISE + KEPT:
        assert text in terminal, text
