"""``affect-llm eval``: score a results JSONL against a reference manifest.

    affect-llm eval results.jsonl --refs manifest.jsonl --out runs/eval --judge embedding
    affect-llm eval results.jsonl --refs manifest.jsonl --out runs/eval \\
        --judge openai --judge-url http://127.0.0.1:8000/v1 --judge-model qwen2.5-7b-instruct
    affect-llm eval results.jsonl --refs manifest.jsonl --out runs/eval \\
        --scoring mer-ov --scoring mer-unibench --ov-grouping llm --sentiment-grouping llm \\
        --judge openai --judge-url http://127.0.0.1:8000/v1 --judge-model qwen2.5-7b-instruct
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from affect_llm.cli.errors import UsageError
from affect_llm.cli.options import add_strict_argument


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
    parser.add_argument(
        "--judge-in-flight", type=int, default=16, help="requests the openai judge keeps running at once"
    )
    parser.add_argument(
        "--judge-structured",
        choices=("response_format", "guided_json", "off"),
        default="response_format",
        help="how the answer's JSON schema is sent (vLLM honours both; 'off' for servers that refuse it)",
    )
    parser.add_argument(
        "--scoring",
        action="append",
        choices=("affect-llm", "mer-ov", "mer-unibench"),
        help="add a published scoring mode (repeatable); affect-llm taxonomy scores are always written",
    )
    parser.add_argument(
        "--ov-grouping",
        choices=("llm", "taxonomy", "exact"),
        default="taxonomy",
        help="MER-OV synonym grouping; 'llm' is the published one and needs --judge openai/hf",
    )
    parser.add_argument(
        "--sentiment-grouping",
        choices=("llm", "taxonomy"),
        default="taxonomy",
        help="MER-UniBench labels -> sentiment; 'llm' is the published one and needs --judge openai/hf",
    )
    parser.add_argument(
        "--unibench-task",
        choices=("ov", "basic", "sentiment"),
        help="kind of every set for MER-UniBench (default: by set name, else by what the references hold)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    add_strict_argument(parser)
    parser.set_defaults(func=run, log_file=lambda args: args.out / "eval.log")
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
            raise UsageError("--judge openai needs --judge-url and --judge-model")
        from affect_llm.evaluation.judge.openai_compat import OpenAICompatJudge

        return OpenAICompatJudge(
            args.judge_url,
            args.judge_model,
            cache=cache,
            max_in_flight=args.judge_in_flight,
            structured_output=args.judge_structured,
        )
    if args.judge_path is None:
        raise UsageError("--judge hf needs --judge-path (a local model folder)")
    from affect_llm.evaluation.judge.hf_local import HFLocalJudge

    return HFLocalJudge(args.judge_path, cache=cache)


def run(args: argparse.Namespace) -> int:
    from affect_llm.evaluation.report import evaluate
    from affect_llm.evaluation.scoring import ScoringOptions

    needs_chat = [
        flag
        for flag, used in (
            ("--ov-grouping llm", args.ov_grouping == "llm" and "mer-ov" in (args.scoring or ())),
            (
                "--sentiment-grouping llm",
                args.sentiment_grouping == "llm" and "mer-unibench" in (args.scoring or ()),
            ),
        )
        if used
    ]
    if needs_chat and args.judge not in ("openai", "hf"):
        raise UsageError(f"{' and '.join(needs_chat)} need --judge openai or --judge hf")
    scoring = ScoringOptions(
        modes=tuple(args.scoring or ("affect-llm",)),
        ov_grouping=args.ov_grouping,
        sentiment_grouping=args.sentiment_grouping,
        unibench_task=args.unibench_task,
    )
    report = evaluate(
        args.results, args.refs, args.out, judge=build_judge(args), seed=args.seed, scoring=scoring,
        strict=args.strict,
    )
    overall, coverage = report["overall"], report["coverage"]
    # Rows refused for their media (or whose generation failed): scored as wrong, not parse failures.
    not_answered = f", not answered {report['parse']['not_answered']}" if report["parse"].get("not_answered") else ""
    print(f"report: {args.out / 'report.json'}")
    print(
        f"scored {coverage['scored']}/{coverage['references']} (missing {coverage['missing']}); "
        f"accuracy {overall.get('accuracy', 0):.4f}, family F1 {overall.get('family_f1', 0):.4f}, "
        f"hit rate {overall.get('hit_rate', 0):.4f}, parse failures {report['parse']['failure_rate']:.4f}"
        f"{not_answered}"
    )
    if report["judge"] is not None:
        means = ", ".join(f"{k} {v['mean']}" for k, v in report["judge"]["kinds"].items())
        print(f"judge {report['judge']['identity']}: {means}")
    if "mer_ov" in report:
        ov = report["mer_ov"]
        print(
            f"MER2024-OV [{ov['grouping']}]: accuracy {_num(ov['accuracy'])}, recall {_num(ov['recall'])}, "
            f"avg {_num(ov['avg'])} over {ov['count']} samples (failed {ov['failed']}, skipped {ov['skipped']})"
        )
    if "mer_unibench" in report:
        bench = report["mer_unibench"]
        for name, figures in bench["sets"].items():
            headline = figures["headline"]
            print(f"MER-UniBench {name} ({figures['task']}): {headline['metric']} {_num(headline['value'])}")
        print(f"MER-UniBench mean of headlines: {_num(bench['mean_headline'])} [{bench['wheel']}]")
    for name, path in (("results", args.results), ("refs", args.refs)):
        for item in report["refused"][name]:
            where = f"line {item['line']}" if "line" in item else f"id {item['id']}"
            print(f"refused {path} {where}: {item['reason']}")
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
