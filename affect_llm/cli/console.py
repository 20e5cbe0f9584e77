"""Where a command's output goes: progress bars and one-line errors to the terminal, library noise to a log.

Third-party warnings (Python ``warnings``: librosa's FutureWarning, peft's and bitsandbytes' notes),
library logging (transformers, accelerate, ...) and what native libraries print on the process's
stderr (decord's and FFmpeg's ``ERROR opening ...``, written from C straight to file descriptor 2)
go to the run's log file. Python-level ``sys.stderr`` is pointed at a copy of the terminal, so
progress bars and this package's own messages stay visible. ``--verbose`` leaves everything on the
terminal (and still writes the log).

File descriptor 2 is redirected for the whole command rather than around each decode: decoders run
in worker threads and in subprocesses (the vLLM engine), and a per-call redirection would race them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _OwnRecords(logging.Filter):
    """Lets through this package's records only (library records go to the log file alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "affect_llm" or record.name.startswith("affect_llm.")


class _TerminalHandler(logging.StreamHandler):
    """Writes above any progress bar (``tqdm.write``), so a warning does not cut a bar in two."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 (logging's own contract: a failing handler reports, never raises)
            self.handleError(record)


class Console:
    """Sets up (on enter) and undoes (on exit) where output goes for one command.

    Args:
        log_path: The run's log file (appended to).
        verbose: Show library warnings, logs and native stderr on the terminal too.
        terminal_level: Lowest level of this package's log records shown on the terminal.

    Attributes:
        terminal: A stream to the terminal, for progress and one-line errors.
        log_path: Where the log is actually written (a fallback when ``log_path`` cannot be opened).
    """

    def __init__(self, log_path: Path, verbose: bool = False, terminal_level: int = logging.WARNING) -> None:
        self.log_path = Path(log_path)
        self.verbose = verbose
        self.terminal_level = terminal_level
        self.terminal: IO[str] = sys.stderr
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> Console:
        self._log = self._open_log()
        self._redirect_native_stderr()
        self._route_logging()
        return self

    def _open_log(self) -> IO[str]:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            return self.log_path.open("a", encoding="utf-8", buffering=1)
        except OSError:
            # An unwritable log must not stop the command: the noise is then dropped.
            self.log_path = Path(os.devnull)
            return open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)

    def _redirect_native_stderr(self) -> None:
        # Only when sys.stderr is the process's own: under a test harness that swapped it, fd 2 is not ours.
        if self.verbose or sys.stderr is not sys.__stderr__:
            return
        try:
            sys.stderr.flush()
            saved_fd = os.dup(2)
        except (OSError, ValueError):
            return
        os.dup2(self._log.fileno(), 2)
        self.terminal = os.fdopen(saved_fd, "w", buffering=1, encoding="utf-8", errors="replace")
        self._saved.update(stderr=sys.stderr, saved_fd=saved_fd)
        sys.stderr = self.terminal

    def _route_logging(self) -> None:
        root = logging.getLogger()
        self._saved.update(level=root.level, handlers=root.handlers[:], raise_exceptions=logging.raiseExceptions)
        file_handler = logging.StreamHandler(self._log)
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        terminal_handler = _TerminalHandler(self.terminal)
        terminal_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        terminal_handler.setLevel(logging.INFO if self.verbose else self.terminal_level)
        if not self.verbose:
            terminal_handler.addFilter(_OwnRecords())
        root.handlers = [file_handler, terminal_handler]
        root.setLevel(logging.INFO)
        # A full disk must not turn every later log record into a traceback on the terminal.
        logging.raiseExceptions = False
        logging.captureWarnings(not self.verbose)
        self._hand_over_transformers(True)

    def _hand_over_transformers(self, ours: bool) -> None:
        # transformers logs through its own handler on the stderr it saw at import: route it via root.
        if "transformers" not in sys.modules:
            return
        from transformers.utils import logging as hf_logging

        if ours:
            hf_logging.disable_default_handler()
            hf_logging.enable_propagation()
        else:
            hf_logging.disable_propagation()
            hf_logging.enable_default_handler()

    def log_exception(self, message: str, error: BaseException) -> None:
        """Write an error and its traceback to the log file only."""
        record = logging.LogRecord("affect_llm.cli", logging.ERROR, __file__, 0, message, None,
                                   (type(error), error, error.__traceback__))
        # The disk that stopped the command may not take the log either.
        with contextlib.suppress(OSError):
            self._log.write(logging.Formatter(LOG_FORMAT).format(record) + "\n")
            self._log.flush()

    def __exit__(self, *exc: object) -> None:
        self._hand_over_transformers(False)
        logging.captureWarnings(False)
        root = logging.getLogger()
        root.handlers = self._saved["handlers"]
        root.setLevel(self._saved["level"])
        logging.raiseExceptions = self._saved["raise_exceptions"]
        if "saved_fd" in self._saved:
            self.terminal.flush()
            os.dup2(self._saved["saved_fd"], 2)
            sys.stderr = self._saved["stderr"]
            self.terminal.close()
            self.terminal = sys.stderr
        # A full disk: what could not be logged is lost, the command's own outcome is not.
        with contextlib.suppress(OSError):
            self._log.close()
