"""``affect-llm merge CKPT OUT``: fold the LoRA adapter into the LLM for serving."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    from affect_llm.cli.options import require_checkpoint
    from affect_llm.loading.checkpoint import merge_checkpoint

    require_checkpoint(args.checkpoint, "checkpoint")
    check_merge_target(Path(args.checkpoint), Path(args.out))
    out = merge_checkpoint(args.checkpoint, args.out, Path(args.models_dir) if args.models_dir else None)
    print(f"merged checkpoint: {out} (LLM for serving: {out / 'llm'})")
    return 0


def check_merge_target(checkpoint: Path, out: Path) -> None:
    """Refuse a target whose content the merge would replace: the merge swaps the whole folder in.

    Only a missing folder or a checkpoint an earlier merge wrote (a rerun) may be the target.

    Raises:
        UsageError: Naming the folder and why.
    """
    from affect_llm.cli.errors import UsageError
    from affect_llm.loading.checkpoint import META_FILE, read_metadata

    source, target = checkpoint.resolve(), out.resolve()
    if source == target or target in source.parents:
        raise UsageError(f"{out}: holds the checkpoint it would be merged from ({checkpoint}); name a new folder")
    if not target.exists():
        return
    if not (target / META_FILE).is_file() or not read_metadata(target).get("merged_from"):
        raise UsageError(f"{out}: exists and is not a merged checkpoint; the merge replaces the whole folder, so "
                         "name a new one (nothing was changed)")
