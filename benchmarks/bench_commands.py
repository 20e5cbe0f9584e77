"""The README's two commands from a fresh clone: wall time, and the quickstart's held-out accuracy.

Each command runs in its own ``git clone`` of the committed tree, with its own new ``.venv`` and an
empty embedded-models folder (``AFFECT_LLM_MODELS``), so every figure includes set-up and model
conversion, as on a fresh machine. What a clone cannot make fresh is said in the output: the
system packages installed by ``apt-get`` and pip's download cache are the machine's.

Figures printed (targets in brackets):

- ``quickstart cold``: ``bash scripts/quickstart.sh`` in a new clone   [<= 20 min on 2 cores]
- ``quickstart warm``: the same command again in that clone             [<= 3 min]
- held-out accuracy per cue subset from ``outputs/report/synth/report.json``
  (audio-only and face-only                                             [>= 0.85])
- evidence accuracy: how often the answer describes the channel that carries the cue
- ``tests``: ``bash scripts/test.sh`` in a second new clone             [<= 15 min]

    python benchmarks/bench_commands.py                     # all three (the quickstart alone: 41 min on 2 cores)
    python benchmarks/bench_commands.py --skip-tests
    python benchmarks/bench_commands.py --keep /tmp/bench   # keep the clones to inspect
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"quickstart cold": 20 * 60, "quickstart warm": 3 * 60, "tests": 15 * 60}
ACCURACY_TARGET = {"audio": 0.85, "face": 0.85}


def fresh_clone(workdir: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A clone of the committed tree and an environment that points its model cache at an empty folder."""
    clone = workdir / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["AFFECT_LLM_MODELS"] = str(workdir / f"{name}-models")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return clone, env


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run ``command`` with its output in ``log``; the wall time in seconds (raises on failure)."""
    started = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit {result.returncode}; see {log}")
    return elapsed


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def quickstart(workdir: Path) -> None:
    clone, env = fresh_clone(workdir, "quickstart")
    cold = timed(["bash", "scripts/quickstart.sh"], clone, env, workdir / "quickstart-cold.log")
    warm = timed(["bash", "scripts/quickstart.sh"], clone, env, workdir / "quickstart-warm.log")
    for name, seconds in (("quickstart cold", cold), ("quickstart warm", warm)):
        target = TARGETS[name]
        print(f"{name:16s} {seconds / 60:6.2f} min   target <= {target / 60:.0f} min   {verdict(seconds <= target)}")
    report = json.loads((clone / "outputs/report/synth/report.json").read_text())
    print("held-out accuracy per cue subset (synthetic set, 'reason' answers):")
    for cue, scores in sorted(report["by_cue"].items()):
        target = ACCURACY_TARGET.get(cue)
        note = f"   target >= {target:.2f}   {verdict(scores['accuracy'] >= target)}" if target else ""
        print(f"  {cue:9s} {scores['accuracy']:.3f} ({scores['count']} clips){note}")
    evidence_path = clone / "outputs/report/evidence.json"
    if evidence_path.is_file():
        evidence = json.loads(evidence_path.read_text())
        print("evidence accuracy: the answer describes the cue-carrying channel's level")
        for cue, by_channel in sorted(evidence["cue_channel"].items()):
            print(f"  {cue:9s} {by_channel:.3f}")


def tests(workdir: Path) -> None:
    clone, env = fresh_clone(workdir, "tests")
    seconds = timed(["bash", "scripts/test.sh"], clone, env, workdir / "tests.log")
    summary = next((line for line in reversed((workdir / "tests.log").read_text().splitlines())
                    if " passed" in line or " failed" in line), "?")
    target = TARGETS["tests"]
    print(f"{'tests':16s} {seconds / 60:6.2f} min   target <= {target / 60:.0f} min   {verdict(seconds <= target)}")
    print(f"  pytest: {summary.strip('= ')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="affect-llm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    print(f"commit {commit.strip()}, {os.cpu_count()} cores; apt packages and pip's download cache are the machine's")
    try:
        if not args.skip_quickstart:
            quickstart(workdir)
        if not args.skip_tests:
            tests(workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
