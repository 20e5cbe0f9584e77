"""``affect-llm merge CKPT OUT``: fold the LoRA adapter into the LLM for serving."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="merge a LoRA checkpoint into a standalone one",
        description="Writes a checkpoint whose llm/ folder is a plain merged HF causal LM (servable by vLLM).",
    )
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--models-dir", default=None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affect_llm.cli.options import require_checkpoint
    from affect_llm.loading.checkpoint import merge_checkpoint

    require_checkpoint(args.checkpoint, "checkpoint")
    out = merge_checkpoint(args.checkpoint, args.out, Path(args.models_dir) if args.models_dir else None)
    print(f"merged checkpoint: {out} (LLM for serving: {out / 'llm'})")
    return 0
