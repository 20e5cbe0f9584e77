"""``affect-llm train CONFIG [key=value ...] [--resume]``: run a curriculum."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from affect_llm.cli.options import add_strict_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="run a training curriculum",
        description="Run every stage of a curriculum config; finished stages are skipped on rerun.",
    )
    parser.add_argument("config", help="YAML config under training/")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=4")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the interrupted stage from its last state")
    again.add_argument("--restart", action="store_true",
                       help="train the interrupted stage again from its first step (its saved state is discarded)")
    parser.add_argument("--models-dir", default=None, help="prepared embedded models (default: the cache)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and its data (rows for every stage and task) and exit")
    parser.add_argument("--config-only", action="store_true",
                        help="with --check: skip the data (for configs whose manifests are not prepared yet)")
    add_strict_argument(parser)
    parser.set_defaults(func=run, log_file=_log_file, log_level="info")


def _log_file(args: argparse.Namespace) -> Path:
    """``<run_dir>/train.log``, beside the run's other records (``--check`` creates no run folder)."""
    from affect_llm.paths import cache_root
    from affect_llm.training.config import load_config

    if args.check:
        return cache_root() / "logs" / "train-check.log"
    return Path(load_config(args.config, args.overrides).run_dir) / "train.log"


def run(args: argparse.Namespace) -> int:
    from affect_llm.training.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(args.config, args.overrides)
    if args.check:
        return check(config, args)
    from affect_llm.training.recipe import CurriculumRecipe

    recipe = CurriculumRecipe(config, resume=args.resume, restart=args.restart,
                              models_dir=Path(args.models_dir) if args.models_dir else None, strict=args.strict)
    final = recipe.run()
    if recipe.accelerator.is_main_process:
        print(f"final checkpoint: {final}")
        if recipe.refused_lines or recipe.failures:
            print(f"refused: {len(recipe.refused_lines)} manifest lines, {len(recipe.failures)} rows whose media "
                  f"the checks refused (each with its reason in {Path(config.run_dir) / 'result.json'})")
    return 0


def check(config, args: argparse.Namespace) -> int:
    """Print what the config resolves to; exit 1 when its data cannot serve a stage or task."""
    from affect_llm.training.data_check import load_splits, stage_data_problems

    problems: list[str] = []
    if not args.config_only:
        refused: list[dict] = []
        splits = load_splits(config, strict=args.strict, refused=refused)
        problems = config.init_problems() + stage_data_problems(config, splits)
        counts = ", ".join(f"{name}: {len(s['train'])} train / {len(s['val'])} val" for name, s in splits.items())
        print(f"data: {counts}")
        for item in refused:
            print(f"refused: {item['manifest']}:{item['line']}: {item['field'] or 'row'}: {item['reason']}")
        for name, dataset in config.data.datasets.items():
            if not splits[name]["val"]:  # a typo in val_split would otherwise train with no validation at all
                print(f"warning: dataset {name!r}: no rows in its validation split {dataset.val_split!r}")
    print(f"precision: {config.model.precision().describe(config.train.precision)}")
    for problem in problems:
        print(f"error: {problem}")
    if problems:
        return 1
    print(f"{args.config}: ok ({len(config.stages)} stages: {', '.join(s.name for s in config.stages)})")
    return 0
