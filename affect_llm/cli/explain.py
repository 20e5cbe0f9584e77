"""``affect-llm explain MANIFEST --model CKPT --out results.jsonl``: batch explanations, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from affect_llm.cli.options import (
    add_compile_argument,
    add_engine_arguments,
    add_evidence_argument,
    add_precision_arguments,
    add_sampling_arguments,
    add_strict_argument,
    check_compile_argument,
    engine_options_from_arguments,
    explanation_guard_for,
    positive_int,
    precision_from_arguments,
    require_checkpoint,
    sampling_from_arguments,
)

SHOWN_PROBLEMS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="generate explanations for every clip of a manifest",
        description="Batch generation; a rerun skips ids already in --out; --shard i/n splits the work.",
    )
    parser.add_argument("manifest")
    parser.add_argument("--model", required=True, help="checkpoint folder (affect-llm train output)")
    parser.add_argument("--out", required=True, help="results JSONL (appended to, resumable)")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--task", default="reason", help="task of the checkpoint's prompt: reason, perceive or evidence")
    parser.add_argument("--split", default=None, help="only rows of this split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard", default="0/1", help="i/n: this run's share of the ids")
    parser.add_argument("--retry-failed", action="store_true",
                        help="explain again the clips whose rows in --out say failed or refused (a rerun skips them)")
    parser.add_argument("--limit", type=int, default=None,
                        help="explain at most N clips not yet in --out (a rerun with the same limit takes the next N)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=160)
    add_sampling_arguments(parser, seed_default=0,
                           seed_help="with --sample: seed of the draws (default 0: a rerun gives the same answers)")
    parser.add_argument("--decode-workers", type=int, default=1,
                        help="processes decoding clips ahead of generation (0: decode between batches)")
    parser.add_argument("--feature-cache", default=None, help="feature cache folder shared with training")
    parser.add_argument("--models-dir", default=None)
    add_evidence_argument(parser)
    add_compile_argument(parser)
    add_precision_arguments(parser)
    add_strict_argument(parser)
    add_engine_arguments(parser)
    parser.set_defaults(func=run, log_file=lambda args: Path(args.out + ".log"))


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from affect_llm.cli.errors import UsageError
    from affect_llm.generation.backend import DecodingSettings
    from affect_llm.generation.explain import (
        ExplainSettings,
        check_split,
        explain_manifest,
        parse_shard,
        pending_count,
    )

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.decode_workers < 0:
        raise UsageError(f"--decode-workers {args.decode_workers}: must be 0 or more")
    try:
        shard = parse_shard(args.shard)
    except ValueError as error:
        raise UsageError(str(error)) from error
    require_checkpoint(args.model)
    check_compile_argument(args, args.model)
    engine_options = engine_options_from_arguments(args)
    settings = ExplainSettings(args.task, args.batch_size, args.split, shard, args.limit, args.strict,
                               args.decode_workers, retry_failed=args.retry_failed)
    decoding = DecodingSettings(args.max_new_tokens, **sampling_from_arguments(args),
                                null_absent_evidence=args.null_absent_evidence,
                                guard_absent_explanation=explanation_guard_for(args), compile=args.compile,
                                draft_tokens=args.draft_tokens)
    # This shard's share, less what an earlier (interrupted or requeued) run already wrote.
    total = pending_count(args.manifest, args.out, settings)
    if total == 0 and args.split is not None:
        check_split(args.manifest, args.split)
    bars: list = []

    def progress(count: int) -> None:
        # The bar starts with the first batch: an error while loading the model stays a single line.
        if not bars:
            bars.append(tqdm(total=total, desc="explain", unit="clip", mininterval=1.0))
        bars[0].update(count)

    try:
        counts = explain_manifest(
            args.manifest, args.out, args.model, settings, decoding, args.backend, args.feature_cache,
            models_dir=Path(args.models_dir) if args.models_dir else None, progress=progress,
            backend_options=engine_options,
            precision=precision_from_arguments(args, args.model),
        )
    finally:
        for bar in bars:
            bar.close()
    print_summary(args.out, counts)
    return 0


def print_summary(out: str, counts: dict[str, int]) -> None:
    """What the run did, and where each refused input is listed."""
    import json

    answered = counts["written"] - counts["failed"]
    print(f"{out}: {answered} answered ({counts['unparseable']} unparseable, {counts['warned']} with warnings), "
          f"{counts['skipped']} already done, {counts['refused']} clips refused, "
          f"{counts['failed'] - counts['refused']} failed in generation, "
          f"{counts['refused_lines']} manifest lines refused")
    if counts.get("failed_earlier"):
        print(f"  {counts['failed_earlier']} of the clips already done failed in generation in an earlier run "
              "(--retry-failed explains them again)")
    if counts.get("refused_earlier"):
        print(f"  {counts['refused_earlier']} of the clips already done were refused by an earlier run "
              f"(listed under refused_earlier in {out}.summary.json; --retry-failed explains them again)")
    if counts.get("speaker_standardised"):
        print(f"  {counts['speaker_standardised']} clips' audio read against their speaker's own statistics")
    if not (counts["refused"] or counts["refused_lines"]):
        return
    summary_path = Path(out + ".summary.json")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    problems = [f"line {i['line']}: {i['field'] or 'row'}: {i['reason']}" for i in summary["refused_lines"]]
    problems += [f"{c['id']}: {c['error']}" for c in summary["refused_clips"]]
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"  refused {problem}")
    if len(problems) > SHOWN_PROBLEMS:
        print(f"  ... {len(problems) - SHOWN_PROBLEMS} more")
    print(f"  every refused input, with its reason: {summary_path}")
