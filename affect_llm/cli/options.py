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
