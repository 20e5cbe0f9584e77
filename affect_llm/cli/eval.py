"""``affect-llm eval``: score a results JSONL against a reference manifest.

    affect-llm eval results.jsonl --refs manifest.jsonl --out runs/eval --judge embedding
    affect-llm eval results.jsonl --refs manifest.jsonl --out runs/eval \\
        --judge openai --judge-url http://127.0.0.1:8000/v1 --judge-model qwen2.5-7b-instruct
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="score results against references (labels, sentiment, optional plausibility judge)",
        description="Score a results JSONL against a reference manifest and write report.json/.md and plots.",
    )
    parser.add_argument("results", type=Path, help="results JSONL written by `affect-llm explain`")
    parser.add_argument("--refs", type=Path, required=True, help="reference manifest JSONL")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the report")
    parser.add_argument("--judge", choices=("none", "embedding", "openai", "hf"), default="none")
    parser.add_argument("--judge-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--judge-model", help="model name sent to the OpenAI-compatible judge")
    parser.add_argument(
        "--judge-path", type=Path, help="local model folder (hf judge) or MiniLM folder (embedding)"
    )
    parser.add_argument("--cache", type=Path, help="judge cache folder (default: <out>/judge_cache)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.set_defaults(func=run)
    return parser


def build_judge(args: argparse.Namespace) -> Any:
    """The judge chosen on the command line, or None."""
    if args.judge == "none":
        return None
    from affect_llm.evaluation.judge.cache import JudgeCache

    cache = JudgeCache(args.cache or args.out / "judge_cache")
    if args.judge == "embedding":
        from affect_llm.evaluation.judge.embedding import EmbeddingJudge

        return EmbeddingJudge(args.judge_path, cache=cache)
    if args.judge == "openai":
        if not args.judge_url or not args.judge_model:
            raise ValueError("--judge openai needs --judge-url and --judge-model")
        from affect_llm.evaluation.judge.openai_compat import OpenAICompatJudge

        return OpenAICompatJudge(args.judge_url, args.judge_model, cache=cache)
    if args.judge_path is None:
        raise ValueError("--judge hf needs --judge-path (a local model folder)")
    from affect_llm.evaluation.judge.hf_local import HFLocalJudge

    return HFLocalJudge(args.judge_path, cache=cache)


def run(args: argparse.Namespace) -> int:
    from affect_llm.evaluation.report import evaluate

    report = evaluate(args.results, args.refs, args.out, judge=build_judge(args), seed=args.seed)
    overall, coverage = report["overall"], report["coverage"]
    print(f"report: {args.out / 'report.json'}")
    print(
        f"scored {coverage['scored']}/{coverage['references']} (missing {coverage['missing']}); "
        f"accuracy {overall.get('accuracy', 0):.4f}, family F1 {overall.get('family_f1', 0):.4f}, "
        f"hit rate {overall.get('hit_rate', 0):.4f}, parse failures {report['parse']['failure_rate']:.4f}"
    )
    if report["judge"] is not None:
        means = ", ".join(f"{k} {v['mean']}" for k, v in report["judge"]["kinds"].items())
        print(f"judge {report['judge']['identity']}: {means}")
    return 0
