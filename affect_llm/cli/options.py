"""Command-line options shared by the commands that load a checkpoint (explain, chat)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from affect_llm.precision import DTYPE_NAMES

if TYPE_CHECKING:
    from affect_llm.precision import Precision


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--load-in-4bit``; both default to what the checkpoint records."""
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="weight dtype of the LLM (default: as the checkpoint was trained)")
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                        help="hold the LLM in NF4 4-bit (bitsandbytes); default: as the checkpoint was trained")


def precision_from_arguments(args: argparse.Namespace, checkpoint: str | Path) -> Precision | None:
    """The checkpoint's recorded precision with the command-line overrides, or None when none is given."""
    if args.dtype is None and args.load_in_4bit is None:
        return None
    from affect_llm.loading.checkpoint import recorded_precision

    return recorded_precision(checkpoint).overridden(args.dtype, args.load_in_4bit)


def add_strict_argument(parser: argparse.ArgumentParser) -> None:
    """``--strict``: stop at the first refused manifest line or medium (exit code 3)."""
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first refused manifest line or media file (default: record it and go on)")


def require_checkpoint(path: str | Path, flag: str = "--model") -> Path:
    """The checkpoint folder, or a :class:`UsageError` saying what is wrong with it and what to do."""
    import json

    from affect_llm.cli.errors import UsageError

    folder = Path(path)
    hint = "give a folder written by `affect-llm train` (its final/ or a stage's best/) or `affect-llm merge`"
    if not folder.exists():
        raise UsageError(f"{flag} {folder}: no such checkpoint folder; {hint}")
    if not folder.is_dir():
        raise UsageError(f"{flag} {folder}: a file, not a checkpoint folder; {hint}")
    meta = folder / "affect_checkpoint.json"
    if not meta.is_file():
        raise UsageError(f"{flag} {folder}: not an affect-llm checkpoint (no affect_checkpoint.json); {hint}")
    try:
        json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{meta}: unreadable ({error}); the checkpoint is damaged: copy it again or "
                         "retrain") from error
    return folder
