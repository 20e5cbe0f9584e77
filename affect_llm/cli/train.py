"""``affect-llm train CONFIG [key=value ...] [--resume]``: run a curriculum."""

from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="run a training curriculum",
        description="Run every stage of a curriculum config; finished stages are skipped on rerun.",
    )
    parser.add_argument("config", help="YAML config under training/")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=4")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted stage from its last state")
    parser.add_argument("--models-dir", default=None, help="prepared embedded models (default: the cache)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and its data (rows for every stage and task) and exit")
    parser.add_argument("--config-only", action="store_true",
                        help="with --check: skip the data (for configs whose manifests are not prepared yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affect_llm.training.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(args.config, args.overrides)
    if args.check:
        return check(config, args)
    from affect_llm.training.recipe import CurriculumRecipe

    recipe = CurriculumRecipe(config, resume=args.resume, models_dir=Path(args.models_dir) if args.models_dir else None)
    final = recipe.run()
    if recipe.accelerator.is_main_process:
        print(f"final checkpoint: {final}")
    return 0


def check(config, args: argparse.Namespace) -> int:
    """Print what the config resolves to; exit 1 when its data cannot serve a stage or task."""
    from affect_llm.training.data_check import load_splits, stage_data_problems

    problems: list[str] = []
    if not args.config_only:
        splits = load_splits(config)
        problems = stage_data_problems(config, splits)
        counts = ", ".join(f"{name}: {len(s['train'])} train / {len(s['val'])} val" for name, s in splits.items())
        print(f"data: {counts}")
    print(f"precision: {config.model.precision().describe(config.train.precision)}")
    for problem in problems:
        print(f"error: {problem}")
    if problems:
        return 1
    print(f"{args.config}: ok ({len(config.stages)} stages: {', '.join(s.name for s in config.stages)})")
    return 0
