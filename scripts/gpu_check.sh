#!/usr/bin/env bash
# GPU check: bf16 training of a two-stage QLoRA curriculum, killed mid-stage and resumed, then
# batched HF explanation, on small models this script builds and saves itself (nothing is
# downloaded). It prints its figures: step rate, losses of the resumed run against an uninterrupted
# one, explanation throughput, peak memory. With two or more GPUs it also resumes a killed FSDP
# run, and a ZeRO-3 run where DeepSpeed is installed.
#
# Status: this script has NOT run on a CUDA machine yet (none was available where it was written).
# Its reduced CPU form (fewer steps, bitsandbytes' CPU 4-bit) runs here in about three minutes.
# Run it on the first CUDA machine and record its figures in training/README.md.
#
#   bash scripts/gpu_check.sh                  # work folder: outputs/gpu_check (removed first)
#   WORK=/scratch/gpu_check bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
WORK=${WORK:-outputs/gpu_check}
rm -rf "$WORK" && mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
started=$(date +%s)
say() { echo "[gpu_check] $* ($(( $(date +%s) - started )) s)"; }

GPUS=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$GPUS" -gt 0 ]; then
  say "CUDA: $GPUS device(s): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
  SIZE=gpu STEPS=30 KILL_AFTER=12 BATCH=16
else
  say "no CUDA device: the reduced CPU form (not a GPU figure)"
  SIZE=cpu STEPS=8 KILL_AFTER=3 BATCH=4
fi
python -c "import bitsandbytes" 2>/dev/null || { echo "[gpu_check] bitsandbytes is not installed: pip install bitsandbytes" >&2; exit 1; }

say "building a small LLM (save_pretrained: 4-bit quantization needs loaded weights) and a sample set"
python - "$WORK" "$SIZE" <<'EOF'
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, Qwen2Config
from affect_llm.modeling.tiny import tiny_tokenizer
work, size = Path(sys.argv[1]), sys.argv[2]
width, layers = (512, 8) if size == "gpu" else (64, 2)
tokenizer = tiny_tokenizer()
config = Qwen2Config(vocab_size=len(tokenizer) + 8, hidden_size=width, intermediate_size=4 * width,
                     num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                     max_position_embeddings=2048, tie_word_embeddings=False)
AutoModelForCausalLM.from_config(config).save_pretrained(work / "llm")
tokenizer.save_pretrained(work / "llm")
EOF
affect-llm data synth --out "$WORK/synth" --seed 0 --num-train 64 --num-val 8 --num-test-per-cue 4 >/dev/null

QUANT=4bit
config() {  # config <run_dir> <yaml>, with $QUANT and $BATCH
  cat > "$2" <<EOF
run_dir: $1
seed: 0
model: {llm: $WORK/llm, audio_encoder: "tiny:whisper", face_encoder: "tiny:fer", quantization: $QUANT,
        audio_window_seconds: 4.0, num_audio_tokens: 4, num_face_tokens: 2}
lora: {r: 8, alpha: 16, dropout: 0.1}
data:
  datasets: {synth: {manifest: $WORK/synth/manifest.jsonl}}
  num_frames: 2
  feature_cache: $WORK/cache
  decode_workers: 2
train: {batch_size: $BATCH, precision: bf16, checkpoint_every: 2, log_every: 1, tensorboard: false}
stages:
  - {name: align, datasets: {synth: 1.0}, tasks: {perceive: 1.0}, trainable: [projectors], lr: 3.0e-3, steps: $STEPS}
  - {name: reason, datasets: {synth: 1.0}, tasks: {perceive: 0.5, reason: 0.5}, trainable: [projectors, lora],
     lr: 1.0e-3, warmup_steps: 2, steps: $STEPS}
EOF
}

peak_watch() {  # peak_watch <file>: GPU memory in use (MiB), sampled every second, until killed
  while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -1 >> "$1"; sleep 1; done
}

train_killed_and_resumed() {  # <name> <launcher...>: uninterrupted, then killed after step KILL_AFTER of reason and resumed
  local name=$1; shift
  config "$WORK/$name/straight" "$WORK/$name.straight.yaml"
  config "$WORK/$name/killed" "$WORK/$name.killed.yaml"
  local t0; t0=$(date +%s)
  "$@" train "$WORK/$name.straight.yaml" > "$WORK/$name.straight.log" 2>&1
  say "$name: uninterrupted run in $(( $(date +%s) - t0 )) s"
  setsid "$@" train "$WORK/$name.killed.yaml" > "$WORK/$name.killed.log" 2>&1 &
  local pid=$!
  until python -c "import json,sys; l=[json.loads(x) for x in open('$WORK/$name/killed/log.jsonl')]; \
sys.exit(0 if any(r['stage']=='reason' and r['step']>=$KILL_AFTER for r in l) else 1)" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "[gpu_check] $name: training ended before the kill" >&2; exit 1; }
    sleep 0.2
  done
  kill -9 -- "-$pid"; wait "$pid" 2>/dev/null || true
  say "$name: killed after step $KILL_AFTER of stage reason; resuming"
  "$@" train "$WORK/$name.killed.yaml" --resume > "$WORK/$name.resumed.log" 2>&1
  python - "$WORK/$name" <<'EOF'
import json, sys
from pathlib import Path
def losses(run):
    found = {}
    for line in (Path(run) / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        found[(r["stage"], r["step"])] = (r["loss"], r["samples_per_s"])
    return found
a, b = losses(Path(sys.argv[1]) / "straight"), losses(Path(sys.argv[1]) / "killed")
diff = max(abs(a[k][0] - b[k][0]) for k in a) if a.keys() == b.keys() else float("inf")
rate = sorted(v[1] for v in a.values())[len(a) // 2]
print(f"[gpu_check] {Path(sys.argv[1]).name}: {len(a)} steps; max |loss resumed - uninterrupted| = {diff:.2e} "
      f"({'ok' if diff <= 1e-5 and a.keys() == b.keys() else 'DIFFERENT'}); median {rate:.1f} samples/s")
EOF
}

if [ "$GPUS" -gt 0 ]; then peak_watch "$WORK/gpu_mem.txt" & WATCH=$!; fi
train_killed_and_resumed single affect-llm

say "batched HF explain (batch 16) of the held-out clips"
t0=$(date +%s.%N)
affect-llm explain "$WORK/synth/manifest.jsonl" --model "$WORK/single/straight/final" --split test \
  --out "$WORK/explain.jsonl" --batch-size 16 --max-new-tokens 32 --feature-cache "$WORK/cache" > "$WORK/explain.log" 2>&1
python - "$WORK/explain.jsonl" "$t0" <<'EOF'
import json, sys, time
rows = [json.loads(line) for line in open(sys.argv[1])]
seconds = time.time() - float(sys.argv[2])
statuses = {s: sum(r["parse_status"] == s for r in rows) for s in {r["parse_status"] for r in rows}}
print(f"[gpu_check] explain: {len(rows)} clips in {seconds:.1f} s ({len(rows) / seconds:.2f} clips/s, model load "
      f"included); parse status {statuses}")
EOF

if [ "$GPUS" -ge 2 ]; then
  # Sharded runs hold a bf16 LLM (4-bit weights are not sharded); the ZeRO json fixes a micro-batch of 8.
  QUANT=none BATCH=8
  say "FSDP over $GPUS GPUs"
  train_killed_and_resumed fsdp accelerate launch --config_file training/accelerate/fsdp.yaml \
    --num_processes "$GPUS" -m affect_llm.cli.main
  if python -c "import deepspeed" 2>/dev/null; then
    say "DeepSpeed ZeRO-3 over $GPUS GPUs"
    train_killed_and_resumed zero3 accelerate launch --config_file training/accelerate/deepspeed_zero3.yaml \
      --num_processes "$GPUS" -m affect_llm.cli.main
  else
    say "DeepSpeed is not installed: ZeRO-3 resume not checked (pip install deepspeed)"
  fi
fi

if [ -n "${WATCH:-}" ]; then
  kill "$WATCH" 2>/dev/null || true
  say "peak GPU memory in use: $(sort -n "$WORK/gpu_mem.txt" | tail -1) MiB"
fi
say "done; logs in $WORK"
