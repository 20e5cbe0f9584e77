"""``affect-llm explain MANIFEST --model CKPT --out results.jsonl``: batch explanations, resumable."""

from __future__ import annotations

import argparse

from affect_llm.cli.options import add_precision_arguments, precision_from_arguments


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
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feature-cache", default=None, help="feature cache folder shared with training")
    parser.add_argument("--models-dir", default=None)
    add_precision_arguments(parser)
    parser.add_argument("--vllm-python", default=None,
                        help="interpreter of a separate vLLM environment (e.g. .venv-vllm/bin/python)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from affect_llm.data.manifest import load_manifest
    from affect_llm.generation.backend import DecodingSettings
    from affect_llm.generation.explain import ExplainSettings, explain_manifest, parse_shard

    settings = ExplainSettings(args.task, args.batch_size, args.split, parse_shard(args.shard), args.limit)
    decoding = DecodingSettings(args.max_new_tokens, args.sample, args.temperature, seed=args.seed)
    total = sum(1 for r in load_manifest(args.manifest) if args.split is None or r.split == args.split)
    with tqdm(total=total, desc="explain", unit="clip", mininterval=1.0) as bar:
        counts = explain_manifest(
            args.manifest, args.out, args.model, settings, decoding, args.backend, args.feature_cache,
            models_dir=Path(args.models_dir) if args.models_dir else None, progress=bar.update,
            backend_options={"vllm_python": args.vllm_python} if args.backend == "vllm" and args.vllm_python else None,
            precision=precision_from_arguments(args, args.model),
        )
    print(f"{args.out}: {counts['written']} written, {counts['skipped']} already done, "
          f"{counts['failed']} failed, {counts['unparseable']} unparseable")
    return 0
