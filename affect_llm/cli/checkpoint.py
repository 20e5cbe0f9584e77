"""``affect-llm checkpoint upgrade OLD NEW``: convert a checkpoint of an earlier format, once.

    affect-llm checkpoint upgrade runs/embedded/final runs/embedded/final-v2
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoint", help="checkpoint maintenance (format upgrade)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="checkpoint_command", required=True)
    upgrade = actions.add_parser("upgrade", help="write a format-1 checkpoint in the current format")
    upgrade.add_argument("old", help="checkpoint folder written in format 1")
    upgrade.add_argument("new", help="folder to write (must not exist)")
    upgrade.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    from affect_llm.loading.upgrade import upgrade_checkpoint

    out = upgrade_checkpoint(args.old, args.new)
    print(f"upgraded checkpoint: {out}")
    return 0
