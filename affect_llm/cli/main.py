"""``affect-llm`` console script: dispatches to one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code; it may also set
``log_file`` (namespace -> path of the run's log) and ``log_level`` (``"info"`` to show this package's
progress messages). Modules are imported only when listed here, so a missing optional dependency of
one subcommand (for example vLLM) never breaks the others: they import heavy packages inside ``func``.

Global flags, accepted before or after the subcommand: ``--debug`` (show the traceback of an error)
and ``--verbose`` (library warnings and logs on the terminal too). Exit codes: :mod:`affect_llm.cli.errors`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import NoReturn

from affect_llm.cli.console import Console
from affect_llm.cli.errors import EXIT_READER_GONE, EXIT_USAGE, Terminated, UsageError, classify, one_line
from affect_llm.memory import bound_onednn_primitive_cache

SUBCOMMAND_MODULES = (
    "models",
    "merge",
    "checkpoint",
    "data",
    "train",
    "chat",
    "explain",
    "explain_merge",
    "eval",
    "serve",
)


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes end in one line (and exit code 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show library warnings and logs on the terminal (else only in the run's log file)")


def _add_flags_everywhere(parser: argparse.ArgumentParser) -> None:
    """The global flags on every subcommand too; SUPPRESS keeps a value given before the subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _global_flags(sub, argparse.SUPPRESS)
                _add_flags_everywhere(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="affect-llm", description="Explainable multimodal emotion reasoning.")
    _global_flags(parser, False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f"affect_llm.cli.{name}")
        module.register(subparsers)
    _add_flags_everywhere(parser)
    return parser


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed; ``key=value`` words after a flag join the command's overrides.

    argparse ends a positional list at the first flag, so ``train CONFIG --check train.batch_size=4``
    would refuse the override that ``train CONFIG train.batch_size=4 --check`` takes.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    taken = [word for word in extra if "=" in word and not word.startswith("-")] if isinstance(overrides, list) else []
    stray = [word for word in extra if word not in taken]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if taken:
        overrides.extend(taken)
    return args


def log_path(args: argparse.Namespace) -> Path:
    """The run's log file: the subcommand's choice, else ``<cache>/logs/<command>.log``."""
    from affect_llm.paths import cache_root

    chooser = getattr(args, "log_file", None)
    if chooser is not None:
        try:
            return Path(chooser(args))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a bad argument behind the path is reported by the command itself
    return cache_root() / "logs" / f"{args.command}.log"


def _fail(prog: str, error: BaseException, console: Console | None, debug: bool) -> int:
    code, message = classify(error)
    stream = console.terminal if console is not None else sys.stderr
    where = f" (traceback in {console.log_path}; --debug shows it here)" if console and code == 70 else ""
    if console is not None:
        console.log_exception(message, error)
    if debug:
        traceback.print_exception(error, file=stream)
    print(f"{prog}: error: {one_line(message)}{where}", file=stream, flush=True)
    return code


def stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (``affect-llm ... | head``).

    Linux and macOS report that as an error condition when the pipe is polled for writing. A broken
    pipe elsewhere (a judge server's socket) leaves standard output writable and stays an error.
    """
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no real file behind stdout (a test's capture), or no poll
        return False


def _quiet_on_closed_stdout() -> int:
    # Output nobody reads is not an error: end as `cat | head` does. Standard output is pointed at
    # the null device so that the interpreter's final flush does not raise the same error again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_READER_GONE


def _terminated_handler(owner: int):
    """SIGTERM raised as :class:`Terminated` in the process that ran ``main`` (pid ``owner``). A
    forked child (a DataLoader worker) inherits the handler: there SIGTERM ends the process as it
    would without it, since its parent stops it that way and waits for it to go."""

    def handle(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    return handle


def main(argv: list[str] | None = None) -> int:
    bound_onednn_primitive_cache()  # before any command computes anything
    # SIGTERM unwinds like Ctrl-C (locks released, summaries written) instead of ending the process
    # where it stands. The server replaces it with uvicorn's own graceful shutdown. The caller's
    # handler is put back on return (main may run inside another program, such as a test runner).
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminated_handler(os.getpid()))
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str] | None) -> int:
    try:
        args = parse_arguments(argv)
    except UsageError as error:
        print(f"affect-llm: error: {one_line(str(error))}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    prog = f"affect-llm {args.command}"
    level = logging.INFO if getattr(args, "log_level", None) == "info" else logging.WARNING
    with Console(log_path(args), verbose=args.verbose, terminal_level=level) as console:
        try:
            code = int(args.func(args) or 0)
            if sys.stdout is not None:  # inside the try: a reader that left shows here, not at exit
                sys.stdout.flush()
            return code
        except BrokenPipeError as error:
            if stdout_reader_gone():
                console.log_exception("standard output was closed by its reader", error)
                return _quiet_on_closed_stdout()
            return _fail(prog, error, console, args.debug)
        except (Exception, KeyboardInterrupt) as error:  # every way a command ends badly gets one line
            return _fail(prog, error, console, args.debug)


if __name__ == "__main__":
    sys.exit(main())
