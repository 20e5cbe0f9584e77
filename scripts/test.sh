#!/usr/bin/env bash
# Set up everything on a fresh machine and run the whole test suite.
#
#   bash scripts/test.sh                 # everything, embedded-weight tests included
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
#
# The embedded-weight tests (marked `embedded`) need the converted default models; this script
# prepares them first (a no-op once the cache is valid), so none of them is skipped here.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "[test] preparing the embedded default models"
affect-llm models prepare

echo "[test] ruff"
ruff check affect_llm tests benchmarks scripts

echo "[test] pytest"
python -m pytest -q -p no:cacheprovider "$@"
