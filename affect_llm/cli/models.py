"""``affect-llm models``: prepare and list the embedded default models.

Examples::

    affect-llm models prepare                 # convert all embedded models once
    affect-llm models prepare whisper-base --force
    affect-llm models list --dir /data/affect-models
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand with ``prepare`` and ``list``."""
    parser = subparsers.add_parser("models", help="prepare / list the embedded default models")
    actions = parser.add_subparsers(dest="models_command", required=True)

    prepare = actions.add_parser("prepare", help="convert embedded models into transformers folders")
    prepare.add_argument("names", nargs="*", metavar="NAME", help="models to prepare (default: all)")
    prepare.add_argument("--dir", type=Path, default=None, help="models folder (default $AFFECT_LLM_MODELS)")
    prepare.add_argument("--force", action="store_true", help="convert again even if prepared")
    prepare.add_argument("--verify", action="store_true", help="re-hash every file of prepared folders")
    prepare.set_defaults(func=run_prepare, log_level="info")

    listing = actions.add_parser("list", help="show embedded models and their state")
    listing.add_argument("--dir", type=Path, default=None, help="models folder (default $AFFECT_LLM_MODELS)")
    listing.add_argument("--verify", action="store_true", help="re-hash every file")
    listing.set_defaults(func=run_list)


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare the requested models and print where each one is."""
    import time

    from affect_llm.embedded.prepare import prepare_models

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    prepared = prepare_models(args.dir, names=args.names or None, force=args.force, verify=args.verify)
    for name, folder in prepared.items():
        print(f"{name}\t{folder}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def run_list(args: argparse.Namespace) -> int:
    """Print one line per embedded model; exit 1 if any folder is corrupt."""
    from affect_llm.embedded.prepare import list_models
    from affect_llm.references import HUB_MODELS

    rows = list_models(args.dir, verify=args.verify)
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        print(
            f"{row['name']:<{width}}  {row['status']:<7}  {_human_size(row['size']):>9}  "
            f"{row['licence']:<10}  {row['path']}"
        )
    print("hub models usable by id on machines with hub access:")
    for hub_id, role, licence in HUB_MODELS:
        print(f"  {hub_id}  ({role}, {licence})")
    return 1 if any(row["status"] == "corrupt" for row in rows) else 0
