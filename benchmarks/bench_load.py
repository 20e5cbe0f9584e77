"""Peak memory of loading a stage-2 checkpoint (projectors + LoRA on the LLM) in fp32 and in 4-bit NF4.

    python benchmarks/bench_load.py                  # embedded SmolLM2-135M + Whisper-base + FER, 3 repeats
    python benchmarks/bench_load.py --model tiny     # tiny random parts (seconds)

Each load runs in a fresh process (peak resident memory is per process); printed are medians over
repeats of the process's peak RSS and, once the model is loaded, its private memory and its mapped
files (safetensors are memory-mapped: those pages are page cache the kernel can drop), with the
bytes of LLM weights the model holds, and the CUDA peak where a GPU loads it. Loading in 4-bit reads
the stored weights and quantizes them on the fly, so on the CPU its peak can exceed an fp32 load;
what it saves is what the model then holds. The checkpoint is built once: the embedded model with a
LoRA adapter, saved as a training stage would.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOAD = """
import json, resource, sys, torch
from affect_llm.loading.checkpoint import load_checkpoint, recorded_precision
from affect_llm.modeling.trainable import llm_weight_summary
precision = recorded_precision(sys.argv[1]).overridden(load_in_4bit=sys.argv[2] == "4bit")
device = "cuda" if torch.cuda.is_available() else None
model, processor = load_checkpoint(sys.argv[1], precision=precision, device=device)
gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device else None
llm_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
llm_bytes += sum(b.numel() * b.element_size() for b in model.language_model.buffers())
linear_4bit = llm_weight_summary(model)["linear_4bit"]
import ctypes, gc
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back what the loader freed, so RSS shows what is held
status = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in open("/proc/self/status")
          if line.startswith(("RssAnon:", "RssFile:"))}
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": status["RssAnon"], "file_mb": status["RssFile"], "gpu_peak_mb": gpu_mb,
                  "llm_weights_mb": llm_bytes / 2**20, "linear_4bit": linear_4bit}))
"""


def build_checkpoint(model: str, out: Path) -> Path:
    from affect_llm.loading.build import build_model
    from affect_llm.loading.checkpoint import save_checkpoint
    from affect_llm.loading.spec import ModelSpec
    from affect_llm.modeling.tiny import tiny_config, tiny_tokenizer
    from affect_llm.modeling.trainable import LoraSettings, apply_lora

    if model == "embedded":
        spec = ModelSpec(llm="smollm2-135m-instruct", audio_encoder="whisper-base", face_encoder="fer-mini-xception",
                         audio_window_seconds=4.0, audio_encoder_layers=3, audio_projector="mlp")
    else:
        from transformers import AutoModelForCausalLM

        folder = out.parent / "tiny_llm"
        AutoModelForCausalLM.from_config(tiny_config("llm")).save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        spec = ModelSpec(llm=str(folder), audio_encoder="tiny:whisper", face_encoder="tiny:fer",
                         audio_window_seconds=4.0)
    built, processor = build_model(spec)
    apply_lora(built, LoraSettings(r=16, alpha=32))
    return save_checkpoint(built, processor, out, metadata={"stage": "reason", "step": 1})


def measure(checkpoint: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD, str(checkpoint), mode], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("embedded", "tiny"), default="embedded")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        checkpoint = build_checkpoint(args.model, Path(tmp) / "stage2")
        results = {mode: [measure(checkpoint, mode) for _ in range(args.repeats)] for mode in ("fp32", "4bit")}
    print(f"loading a stage-2 checkpoint ({args.model}), {args.repeats} fresh processes each")
    med = {mode: {key: statistics.median(r[key] for r in runs) for key in ("peak_rss_mb", "anon_mb", "file_mb")}
           for mode, runs in results.items()}
    for mode, runs in results.items():
        gpu = runs[0]["gpu_peak_mb"]
        print(f"  {mode:>5}: peak RSS {med[mode]['peak_rss_mb']:6.0f} MB; once loaded {med[mode]['anon_mb']:6.0f} MB "
              f"private + {med[mode]['file_mb']:6.0f} MB mapped files (medians); LLM weights held "
              f"{runs[0]['llm_weights_mb']:6.1f} MB; 4-bit linear layers {runs[0]['linear_4bit']}"
              + (f"; CUDA peak {gpu:.0f} MB" if gpu is not None else ""))
    ratio = results["4bit"][0]["llm_weights_mb"] / results["fp32"][0]["llm_weights_mb"]
    print(f"  4bit / fp32: peak RSS {med['4bit']['peak_rss_mb'] / med['fp32']['peak_rss_mb']:.2f}, "
          f"private memory once loaded {med['4bit']['anon_mb'] / med['fp32']['anon_mb']:.2f}, LLM weights held {ratio:.2f}")


if __name__ == "__main__":
    main()
