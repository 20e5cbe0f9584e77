"""``affect-llm`` console script: dispatches to one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Modules are
imported only when listed here, so a missing optional dependency of one subcommand (for
example vLLM) never breaks the others: they import heavy packages inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "models",
    "merge",
    "checkpoint",
    "data",
    "train",
    "chat",
    "explain",
    "eval",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affect-llm", description="Explainable multimodal emotion reasoning."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f"affect_llm.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
