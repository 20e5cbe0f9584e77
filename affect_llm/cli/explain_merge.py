"""``affect-llm explain-merge MANIFEST PART... --out results.jsonl``: join the shards of a batch explanation.

    affect-llm explain-merge data/test.jsonl runs/explain/shard-*.jsonl --out runs/explain/results.jsonl
    affect-llm explain-merge data/all.jsonl runs/explain/shard-*.jsonl --split test --check

Every id of the manifest (of ``--split``) must appear exactly once across the parts. Exit code 0 when
it does, 1 when ids are missing, duplicated or foreign (they are listed, and every one is in
``<out>.merge.json``), 2 for a bad part or parts of different models, prompts or decodings.
Failed rows (refused media, failed generation) are listed but are not missing: they have a row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHOWN_IDS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain-merge", help="join the shard outputs of `explain --shard` and check every id came out once",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", help="the manifest the shards explained")
    parser.add_argument("parts", nargs="+", help="results files of the shards")
    parser.add_argument("--out", default=None, help="merged results JSONL (one row per id, manifest order)")
    parser.add_argument("--split", default=None, help="only ids of this split are expected (as explain --split)")
    parser.add_argument("--check", action="store_true", help="only check; write nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from affect_llm.cli.errors import EXIT_FOUND_BAD, EXIT_OK, UsageError
    from affect_llm.fileio import atomic_write_bytes
    from affect_llm.generation.explain_merge import merge_results

    if args.out is None and not args.check:
        raise UsageError("give --out FILE for the merged results, or --check to only check")
    if args.out is not None and args.check:
        raise UsageError("--check writes nothing: drop --out, or drop --check")
    if args.out is not None and str(Path(args.out).resolve()) in {str(Path(p).resolve()) for p in args.parts}:
        raise UsageError(f"--out {args.out} is one of the parts: write the merge to another file")
    report = merge_results(args.manifest, args.parts, args.out, args.split)
    where = f" (split {args.split})" if args.split else ""
    print(f"{args.manifest}{where}: {len(report.expected)} ids; {report.rows} rows in {len(args.parts)} parts; "
          f"{len(report.missing)} missing, {len(report.duplicated)} duplicated, {len(report.unexpected)} not in "
          f"the manifest; {len(report.failed)} failed, {len(report.unparseable)} unparseable")
    _list("missing", report.missing)
    _list("duplicated", [f"{i} ({n} rows)" for i, n in report.duplicated.items()])
    _list("not in the manifest", report.unexpected)
    _list("failed", [f"{i}: {error}" for i, error in report.failed.items()])
    _list("torn last line (ignored)", report.torn)
    if args.out is not None:
        details = Path(args.out + ".merge.json")
        atomic_write_bytes(details, (json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n").encode())
        state = "complete" if report.complete else "INCOMPLETE"
        print(f"{args.out}: {len(report.expected) - len(report.missing)} rows, {state}; every id listed: {details}")
    if report.missing:
        print("rerun the shards whose ids are missing (the same command resumes), then merge again")
    if report.failed:
        print("failed rows are kept as failed: fix what the errors name, rerun those shards' commands with "
              "--retry-failed, then merge again")
    if report.duplicated or report.unexpected:
        print("parts overlap or come from another manifest: merge only the shards of this manifest's "
              "one --shard i/n split")
    return EXIT_OK if report.complete else EXIT_FOUND_BAD


def _list(what: str, items: list[str]) -> None:
    for item in items[:SHOWN_IDS]:
        print(f"  {what}: {item}")
    if len(items) > SHOWN_IDS:
        print(f"  ... {len(items) - SHOWN_IDS} more {what}")
