"""Exit codes and one-line messages: what the command line says when something stops it.

Every user error (bad arguments, missing files, a bad manifest or config, an unprepared model, a
checkpoint that cannot be read, a locked output, a full disk) ends the command with one line naming
the problem and what to do, and the exit code below; the traceback goes to the log file and, with
``--debug``, to the terminal. The codes are listed in the README.
"""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_FOUND_BAD = 1  # a check found problems: data check (bad rows), train --check, models list (corrupt),
#                    explain-merge (ids missing, duplicated or foreign)
EXIT_USAGE = 2  # a user error: arguments, missing file, bad manifest/config/checkpoint, unprepared model
EXIT_STRICT = 3  # --strict: a manifest line or medium was refused
EXIT_BUSY = 4  # the output is being written by another process
EXIT_NO_SPACE = 5  # the disk is full or a file size limit was reached; rerun to resume
EXIT_GENERATION_STOPPED = 6  # explain: generation failed for several batches in a row
EXIT_INTERNAL = 70  # a bug: the message says where the traceback is
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM (a batch scheduler's time limit, scancel, preemption)
EXIT_READER_GONE = 141  # what reads standard output closed it (`| head`), as a process ended by SIGPIPE

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class UsageError(Exception):
    """A command-line mistake; the message names it and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as from Ctrl-C: locks released,
    summaries written, finished work kept. Batch schedulers send it at a time limit or a cancel."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    # ValueError covers ManifestError, MediaError, CheckpointError, EvaluationError, StaleStageError and
    # the config's own checks: each names the file, line or key at fault.
    from affect_llm.data.polish_set import PolishDataError
    from affect_llm.evaluation.judge.protocol import JudgeError
    from affect_llm.generation.vllm_worker import VLLMEngineError, VLLMUnavailableError

    return (UsageError, ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError, ModuleNotFoundError, JudgeError, VLLMUnavailableError, VLLMEngineError,
            PolishDataError)


def _os_message(error: OSError) -> str:
    # Python's own text, "[Errno 2] No such file or directory: 'x'", reads better as "x: No such file".
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _hint(error: BaseException) -> str:
    from affect_llm.references import ModelNotPreparedError

    if isinstance(error, ModelNotPreparedError) and os.environ.get("AFFECT_LLM_MODELS"):
        return (f"; or set AFFECT_LLM_MODELS to the folder they were prepared in (it is now "
                f"{os.environ['AFFECT_LLM_MODELS']})")
    if isinstance(error, ModuleNotFoundError) and error.name:
        return f" (install it: pip install {error.name}, or run scripts/setup.sh)"
    return ""


def _raised_in_worker(error: BaseException) -> str | None:
    """The original ``Type: message`` line of an error a DataLoader worker raised (torch re-raises it
    in the parent with the worker's whole traceback as its text), else None."""
    text = str(error)
    if "Original Traceback" not in text:
        return None
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name, colon, message = last.partition(": ")  # "package.module.TypeName: message"
    return message if colon and name.rsplit(".", 1)[-1] == type(error).__name__ else last


def _written_file(error: OSError) -> str:
    """The file being written: a copy's or a rename's destination (``filename2``), else ``filename``."""
    return str(error.filename2 or error.filename or "output")


def classify(error: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception that ended a command."""
    from affect_llm.data.issues import RefusedInputError
    from affect_llm.fileio import LockHeldError, os_error_of
    from affect_llm.generation.explain_summary import GenerationStoppedError

    if isinstance(error, KeyboardInterrupt):
        after = "finished work is kept, run the same command again to go on"
        if isinstance(error, Terminated):
            return EXIT_TERMINATED, f"terminated (SIGTERM); {after}"
        return EXIT_INTERRUPTED, f"interrupted; {after}"
    if isinstance(error, RefusedInputError):
        return EXIT_STRICT, str(error)
    if isinstance(error, LockHeldError):
        return EXIT_BUSY, str(error)
    if isinstance(error, GenerationStoppedError):
        return EXIT_GENERATION_STOPPED, str(error)
    os_error = os_error_of(error)
    if os_error is not None and os_error.errno in NO_SPACE_ERRNOS:
        return EXIT_NO_SPACE, (f"cannot write {_written_file(os_error)}: {os_error.strerror}; free some space (or "
                               "raise the file size limit) and run the same command again: finished work is kept")
    if isinstance(error, OSError) and error.errno == errno.EROFS:
        return EXIT_USAGE, f"cannot write {_written_file(error)}: read-only file system; write somewhere else"
    if isinstance(error, _user_error_types()):
        if isinstance(error, KeyError) and error.args:
            text = str(error.args[0])
        elif isinstance(error, OSError) and not isinstance(error, ModuleNotFoundError):
            text = _os_message(error) if type(error).__str__ is OSError.__str__ else str(error)
        else:
            text = _raised_in_worker(error) or str(error)
        return EXIT_USAGE, text + _hint(error)
    return EXIT_INTERNAL, f"internal error: {type(error).__name__}: {error}"


def one_line(text: str) -> str:
    """A message on one line (embedded newlines and runs of spaces folded)."""
    return " ".join(text.split())
