"""Training-step throughput: cached encoder features vs live encoders, against the compute bound.

Renders a small synthetic set in a temporary folder, builds the tiny random model or the embedded
default model (SmolLM2-135M + Whisper-base + FER mini-Xception, prepared by ``affect-llm models
prepare``), puts LoRA on the LLM and trains projectors + LoRA with the recipe's step (answer-token
loss with logits at answer positions only, fused AdamW). Two modes are timed on the same rows:

- ``cached``: items carry encoder features, as the recipe trains from the cache;
- ``live``: items carry encoder inputs, so the frozen encoders run every step.

Per step it reports time, samples/s, LLM tokens/s and peak RSS (Linux: the high-water mark is
reset before each step through ``/proc/self/clear_refs``). The compute bound is the step's FLOPs
divided by the measured float32 ``torch.matmul`` rate (measured for 0.3 s after every timed step,
the median used, since the speed of shared cores drifts); FLOPs come two ways:

- analytic: LLM frozen weights cost 2NT forward + 2NT backward (input gradients only, which the
  projectors below need), trainable weights (LoRA, projectors) 6NT, frozen encoders 2NT forward;
  the common 6NT rule over all LLM weights is printed too, as an upper estimate;
- counted: ``torch.utils.flop_counter.FlopCounterMode`` over one real step. Its table has no entry
  for the CPU flash-attention kernels that ``sdpa`` runs on: their work is counted here with the
  formulas torch gives the GPU kernels, so ``sdpa`` and ``eager`` attention face the same bound.

    python benchmarks/bench_train.py --model tiny --batch-size 8 --steps 10
    python benchmarks/bench_train.py --model embedded --batch-size 4 --steps 6 --audio-window 8
    python benchmarks/bench_train.py --model embedded --batch-size 8 --steps 6 --compile

``--compile`` compiles each LLM decoder layer as ``train.compile: true`` does; the compile happens in
the warm-up steps, which are not timed. ``--attention eager`` trains with matmul attention, as
``train.attention: eager`` does (default: the model's own, sdpa).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from machine import describe_cpu

from affect_llm.memory import peak_resident_mib, reset_peak_resident

SPECS = {
    "tiny": {
        "llm": "tiny:llm",
        "audio_encoder": "tiny:whisper",
        "face_encoder": "tiny:fer",
        "num_audio_tokens": 4,
        "num_face_tokens": 2,
    },
    "embedded": {
        "llm": "smollm2-135m-instruct",
        "audio_encoder": "whisper-base",
        "face_encoder": "fer-mini-xception",
        "num_audio_tokens": 8,
        "num_face_tokens": 4,
    },
}


@dataclass
class StepStats:
    seconds: float
    peak_rss_mb: float
    llm_tokens: int
    matmul_flops_s: float  # the machine's matmul rate measured right after this step


def matmul_flops_per_s(size: int = 1024, seconds: float = 1.0) -> float:
    """Sustained float32 matmul rate on this machine: the roofline the steps are compared with."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)  # warm-up: thread pool and allocator
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started)


def build(kind: str, audio_window: float, models_dir: Path | None, attention: str | None = None):
    """Model with LoRA, projectors + LoRA trainable, and its processor."""
    from affect_llm.loading.build import build_model
    from affect_llm.loading.spec import ModelSpec
    from affect_llm.modeling.trainable import LoraSettings, apply_lora, set_llm_attention, set_trainable

    spec = ModelSpec(**SPECS[kind], audio_window_seconds=audio_window)
    model, processor = build_model(spec, models_dir, seed=0)
    apply_lora(model, LoraSettings(r=16, alpha=32, dropout=0.0))
    set_llm_attention(model, attention)
    set_trainable(model, ["projectors", "lora"])
    model.train()
    return model, processor


def make_items(model, processor, num_rows: int, num_frames: int) -> tuple[list[dict], list[dict]]:
    """The same rows as (cached-feature items, live encoder-input items)."""
    from affect_llm.data.manifest import load_manifest
    from affect_llm.data.synth import generate_synthetic_set
    from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
    from affect_llm.training.targets import answer_for

    with tempfile.TemporaryDirectory() as folder:
        manifest = generate_synthetic_set(
            Path(folder), seed=0, num_train=num_rows, num_val=0, num_test_per_cue=0
        )
        rows = [r for r in load_manifest(manifest) if r.split == "train"]
        options = MediaOptions(num_frames=num_frames, detect_faces=True, decode_workers=2)
        featurizer = MediaFeaturizer(model, processor, None, options)
        features = featurizer(rows)
        job = featurizer.job()
        cached, live = [], []
        for row in rows:
            if row.id not in features:
                continue
            messages = processor.build_messages("perceive", features[row.id].modalities, transcript=row.transcript)
            text = processor.encode_text(messages, answer_for(row, processor.prompt.task_keys("perceive")))
            cached.append({**text, "media": features[row.id]})
            live.append({**text, "media": job.decode(row)})  # the same channels: one decoding rule
    return cached, live


def train_step(model, optimizer, batch: dict[str, Any]) -> None:
    """The recipe's step: answer-token cross-entropy (logits at answer positions only), fused AdamW."""
    from affect_llm.training.step import answer_loss

    loss_sum, count = answer_loss(model, dict(batch))
    (loss_sum / count).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_mode(
    model, processor, items: list[dict], batch_size: int, steps: int, warmup: int
) -> list[StepStats]:
    from affect_llm.training.step import build_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer([{"params": params}], lr=1e-5, weight_decay=0.0)
    stats = []
    for step in range(warmup + steps):
        chosen = [items[(step * batch_size + i) % len(items)] for i in range(batch_size)]
        batch = processor.collate(chosen)
        reset_peak_resident()
        started = time.perf_counter()
        train_step(model, optimizer, batch)
        seconds = time.perf_counter() - started
        if step >= warmup:
            peak_mb = peak_resident_mib()
            # The speed of shared cores drifts: each step gets the rate measured next to it.
            stats.append(StepStats(seconds, peak_mb, int(batch["attention_mask"].sum()),
                                   matmul_flops_per_s(seconds=0.3)))
    return stats


def analytic_flops(model, batch: dict[str, Any], live: bool) -> tuple[float, float]:
    """(frozen-aware estimate, 6NT-over-the-LLM upper estimate) of one step's FLOPs."""
    tokens = int(batch["attention_mask"].sum())  # LLM positions, media tokens included
    llm_frozen = sum(p.numel() for n, p in model.language_model.named_parameters() if not p.requires_grad)
    llm_trainable = sum(p.numel() for p in model.language_model.parameters() if p.requires_grad)
    embeddings = model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    llm_frozen -= embeddings
    estimate = 4 * llm_frozen * tokens + 6 * llm_trainable * tokens
    media = batch["media"]
    for modality, projector in model.projectors.items():
        part = media.get(modality)
        inputs = int(part.feature_mask.sum()) if part is not None and part.is_features else 0
        estimate += 6 * sum(p.numel() for p in projector.parameters()) * max(inputs, 1)
    if live:
        for modality, encoder in model.encoders.items():
            part = media.get(modality)
            if part is not None and not part.is_features:
                with torch.no_grad():
                    _, mask = model.get_media_features(modality, part.values, part.attention_mask)
                estimate += 2 * sum(p.numel() for p in encoder.parameters()) * int(mask.sum())
    return float(estimate), float(6 * (llm_frozen + llm_trainable) * tokens)


def cpu_attention_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU flash-attention kernels (forward, backward), which torch's table lacks."""
    from torch.utils import flop_counter

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten  # FlopCounterMode hands the formulas shapes, not tensors
    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def counted_flops(model, processor, items: list[dict], batch_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    batch = processor.collate(items[:batch_size])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    with FlopCounterMode(display=False, custom_mapping=cpu_attention_formulas()) as counter:
        train_step(model, optimizer, batch)
    return float(counter.get_total_flops())


def report(
    name: str, stats: list[StepStats], batch_size: int, flops: dict[str, float], peak: float
) -> dict[str, Any]:
    seconds = statistics.median(s.seconds for s in stats)
    row = {
        "mode": name,
        "step_ms": 1000 * seconds,
        "samples_s": batch_size / seconds,
        "tokens_s": statistics.median(s.llm_tokens for s in stats) / seconds,
        "peak_rss_mb": statistics.median(s.peak_rss_mb for s in stats),
        "bound_ms": 1000 * flops["counted"] / peak,
        "matmul_gflops": peak / 1e9,
    }
    row["of_bound"] = row["bound_ms"] / row["step_ms"]
    row.update({f"gflop_{k}": v / 1e9 for k, v in flops.items()})
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SPECS), default="tiny")
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="prepared embedded models (default: the cache)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="compile each LLM decoder layer (train.compile)")
    parser.add_argument("--attention", default=None, help="the LLM's attention while training (train.attention)")
    parser.add_argument("--rows", type=int, default=16, help="synthetic rows the batches cycle through")
    parser.add_argument("--num-frames", type=int, default=2)
    parser.add_argument("--audio-window", type=float, default=4.0, help="seconds; synthetic clips are short")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    from affect_llm.modeling.trainable import compile_llm_layers

    model, processor = build(args.model, args.audio_window, args.models_dir, args.attention)
    cached, live = make_items(model, processor, args.rows, args.num_frames)
    print(describe_cpu())
    print(
        f"model={args.model} batch={args.batch_size} steps={args.steps} threads={torch.get_num_threads()} "
        f"compiled layers={args.compile} attention={model.language_model.get_base_model().config._attn_implementation}"
    )
    modes = {"cached": cached, "live": live}
    flops = {}
    for name, items in modes.items():  # counted before any compile: compiled kernels bypass the counter
        batch = processor.collate(items[: args.batch_size])
        estimate, upper = analytic_flops(model, batch, live=name == "live")
        flops[name] = {
            "counted": counted_flops(model, processor, items, args.batch_size),
            "estimate": estimate,
            "6NT": upper,
        }
    if args.compile:
        compile_llm_layers(model)
    rows = []
    for name, items in modes.items():
        stats = time_mode(model, processor, items, args.batch_size, args.steps, args.warmup)
        rates = sorted(round(s.matmul_flops_s / 1e9) for s in stats)
        print(f"{name}: matmul rate after each step {rates} GFLOP/s (float32, 1024^3)")
        rows.append(report(name, stats, args.batch_size, flops[name], statistics.median(s.matmul_flops_s for s in stats)))
    columns = list(rows[0])
    print("  ".join(f"{c:>12}" for c in columns))
    for row in rows:
        print("  ".join(f"{v:>12.3f}" if isinstance(v, float) else f"{v:>12}" for v in row.values()))
    print(
        f"medians over {args.steps} steps; bound_ms = counted FLOPs / matmul rate (the median of the rates measured "
        "after each step); of_bound = bound_ms / step_ms"
    )


if __name__ == "__main__":
    main()
