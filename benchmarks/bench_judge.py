"""Judge throughput: requests/s of the OpenAI-compatible judge at 16 in flight vs one at a time.

A stand-in chat server (``tests/openai_stub.py``) runs as a separate process on 127.0.0.1 and
answers every request after ``--delay`` seconds (100 ms: a loaded judge model), so the figure is
what concurrency buys when the judge, not this client, is the bottleneck. Each repeat scores the
same ``--pairs`` (reference, prediction) pairs twice, each run with an empty cache:

- one at a time: ``judge.score(...)`` in a loop, as the report asked before (``max_in_flight=1``);
- concurrent: ``judge.score_many(...)`` with ``--in-flight`` requests running at once.

It checks that both give the same scores and leave byte-identical cache files, then prints
medians over ``--repeats`` and the ratio of the medians.

    python benchmarks/bench_judge.py                       # 96 pairs, 100 ms, 16 in flight, 3 repeats
    python benchmarks/bench_judge.py --pairs 48 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from openai_stub import StubServer  # noqa: E402 (the stub lives with the tests that share it)

from affect_llm.evaluation.judge.cache import JudgeCache  # noqa: E402
from affect_llm.evaluation.judge.openai_compat import OpenAICompatJudge  # noqa: E402


def pairs(count: int) -> list[tuple[str, str, str]]:
    """Distinct clue pairs (a repeated pair would be a cache hit, not a request)."""
    return [
        (
            f"Reference {i}: a raised voice and a frown.",
            f"Prediction {i}: sounds annoyed, brows drawn.",
            "clue",
        )
        for i in range(count)
    ]


def timed_run(url: str, items: list, in_flight: int, cache_dir: Path) -> tuple[float, list, bytes]:
    """Seconds, results and cache bytes of scoring ``items`` with an empty cache."""
    judge = OpenAICompatJudge(
        url, "stub", cache=JudgeCache(cache_dir), max_in_flight=in_flight, backoff_s=0.0
    )
    start = time.perf_counter()
    # One at a time is the loop the report ran before; score_many is what it runs now.
    results = [judge.score(*item) for item in items] if in_flight == 1 else judge.score_many(items)
    seconds = time.perf_counter() - start
    return seconds, results, (cache_dir / "judge_cache.jsonl").read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds the stub waits before answering")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    items = pairs(args.pairs)
    sequential_s, concurrent_s = [], []
    with StubServer(delay=args.delay, lifetime=1800) as stub, tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            one_s, one, one_cache = timed_run(stub.url, items, 1, Path(tmp) / f"one{repeat}")
            stub.reset()
            many_s, many, many_cache = timed_run(stub.url, items, args.in_flight, Path(tmp) / f"many{repeat}")
            peak = stub.stats()["max_in_flight"]
            stub.reset()
            if [r.score for r in one] != [r.score for r in many] or any(r.score is None for r in many):
                raise SystemExit("scores differ between one-at-a-time and concurrent runs")
            if one_cache != many_cache:
                raise SystemExit("cache files differ between one-at-a-time and concurrent runs")
            sequential_s.append(one_s)
            concurrent_s.append(many_s)
    one_rate = args.pairs / statistics.median(sequential_s)
    many_rate = args.pairs / statistics.median(concurrent_s)
    print(
        f"judge throughput, {args.pairs} pairs, stub answers after {args.delay * 1000:.0f} ms, {args.repeats} repeats"
    )
    print(f"  {'one at a time':<14}: {one_rate:7.1f} requests/s (median {statistics.median(sequential_s):.2f} s)")
    print(
        f"  {f'{args.in_flight} in flight':<14}: {many_rate:7.1f} requests/s (median {statistics.median(concurrent_s):.2f} s, "
        f"server saw at most {peak} at once)"
    )
    print(f"  {'speedup':<14}: {many_rate / one_rate:.1f}x; same scores: yes; same cache file: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
