"""What reinforcement buys over more supervision: two arms from the same supervised checkpoint.

Starting from the embedded-default checkpoint (``runs/embedded/final``, written by
``scripts/quickstart.sh``), on the same training clips (the RL stage's datasets: the synthetic set
and the Polish voices, mixed as ``embedded_rl.yaml`` sets, 3 : 1):

- arm ``rl``: the GRPO stage of ``training/embedded_rl.yaml``;
- arm ``sft``: the supervised ``reason`` stage of ``training/embedded.yaml`` continued (the RL
  stage's datasets and learning rates, constant; the reason stage's task mixture), for as many steps
  as fill the RL arm's wall time (its step time measured over a few steps of its own, in the RL
  stage's precision).

Each arm's final checkpoint explains the held-out synthetic clips and the real recordings, and is
scored by the evaluation report's scorers (family F1 per cue subset, evidence per channel, absent
channels; labels are judged by the report, not by the reward code). The table printed at the end
puts the supervised checkpoint and both arms side by side with the targets.

    python scripts/compare_rl.py                   # both arms, then the table
    python scripts/compare_rl.py --table-only      # the table from arms already run
    python scripts/compare_rl.py --rl-steps 20     # a shorter RL stage (the other arm follows its time)
    python scripts/compare_rl.py --rl-override stages.0.grpo.skip_flat_groups=true   # a setting of the RL arm
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SUPERVISED = Path("runs/embedded")
OUT = Path("outputs/compare_rl")
CALIBRATION_STEPS = 4  # steps of the scratch run that measures the supervised arm's step time
SETS = {  # name -> (manifest, split or None, batch size)
    "synth": ("outputs/synth/manifest.jsonl", "test", 16),
    "polish": ("outputs/polish/manifest.jsonl", "test", 16),
    "pyfeat": ("outputs/pyfeat/manifest.asr.jsonl", None, 8),
}


def cli(*args: str) -> None:
    print("+ affect-llm", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "affect_llm.cli.main", *args], check=True)


def median_step_seconds(run_dir: Path, stage: str, skip: int = 0) -> float:
    """Median seconds per step of ``stage`` in ``run_dir``'s log, after its first ``skip`` steps."""
    rates = [r["samples_per_s"] for line in (run_dir / "log.jsonl").read_text().splitlines()
             if (r := json.loads(line)).get("stage") == stage and r.get("samples_per_s")][skip:]
    if not rates:
        raise SystemExit(f"{run_dir}/log.jsonl has no {stage} steps")
    batch = yaml.safe_load(Path("training/embedded.yaml").read_text())["train"]["batch_size"]
    return batch / statistics.median(rates)


def sft_step_seconds() -> float:
    """Seconds per step of the continued supervised stage as the arm runs it (its precision, compiled).

    The quickstart's own log is no measure: it trained in its own precision (bf16 autocast where the
    CPU has it), while the arm runs in the RL stage's; a float32 step took 14.9 s against 10.8 s.
    A few steps in a scratch run measure it; the first, which compiles, is left out. A rerun reuses
    the scratch stage (``--resume``), which training refuses when its inputs have changed.
    """
    calibration = Path("runs/embedded_sft_calibrate")
    cli("train", str(sft_config(CALIBRATION_STEPS, calibration)), "train.checkpoint_every=0", "--resume")
    return median_step_seconds(calibration, "sft_more", skip=1)


def rl_arm(steps: int | None, overrides: list[str]) -> float:
    """Train the RL arm (or find it trained) and return its wall time in seconds.

    The time is stored beside the arm's outputs when it trains, so a rerun that finds the stage done
    (``--resume`` reuses it in seconds) still gives the other arm the RL arm's time.
    """
    timing = OUT / "rl_seconds.json"
    trained_before = Path("runs/embedded_rl/stages/rl/stage_done.json").is_file()
    if trained_before and not timing.is_file():
        # Timing the --resume below would time a stage that is already done (seconds), and the
        # supervised arm would get those seconds instead of the RL arm's training time.
        raise SystemExit("runs/embedded_rl was trained outside this script, so its wall time is unknown and the "
                         "supervised arm cannot be given the same: move runs/embedded_rl aside and run this "
                         "script again (it trains the RL arm itself and records its time)")
    started = time.perf_counter()
    cli("train", "training/embedded_rl.yaml", *([f"stages.0.steps={steps}"] if steps else []), *overrides, "--resume")
    seconds = time.perf_counter() - started
    if trained_before and timing.is_file():
        return float(json.loads(timing.read_text())["rl"])
    timing.write_text(json.dumps({"rl": round(seconds)}) + "\n")
    return seconds


def sft_config(steps: int, run_dir: Path = Path("runs/embedded_sft_more")) -> Path:
    """The supervised reason stage, continued from the same checkpoint on the RL arm's clips."""
    raw = yaml.safe_load(Path("training/embedded.yaml").read_text())
    rl = yaml.safe_load(Path("training/embedded_rl.yaml").read_text())
    reason = next(s for s in raw["stages"] if s["name"] == "reason")
    # The RL stage's learning rates, constant: the reason stage ended its cosine schedule near zero, and
    # restarting it at its peak (1e-3, projectors 2e-3) moved the checkpoint more than either arm's
    # method did (65 steps: all held-out family F1 0.88 -> 0.69).
    rates = {key: copy.deepcopy(rl["stages"][0][key]) for key in ("lr", "group_lr") if key in rl["stages"][0]}
    stage = {**copy.deepcopy(reason), "name": "sft_more", "init": str(SUPERVISED / "final"),
             "datasets": rl["stages"][0]["datasets"], "steps": steps, "warmup_steps": 0, "schedule": "constant",
             **rates}
    raw.update(run_dir=str(run_dir), stages=[stage])
    # Both arms compute in the same precision and read the same sets: the RL stage's.
    raw["train"]["precision"] = rl["train"]["precision"]
    raw["data"]["datasets"] = rl["data"]["datasets"]
    path = OUT / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def explain_and_score(arm: str, checkpoint: Path) -> None:
    for name, (manifest, split, batch) in SETS.items():
        if not Path(manifest).is_file():
            continue
        results = OUT / arm / f"{name}.jsonl"
        results.parent.mkdir(parents=True, exist_ok=True)
        cli("explain", manifest, "--model", str(checkpoint), *(["--split", split] if split else []),
            "--out", str(results), "--batch-size", str(batch), "--feature-cache", "outputs/feature_cache")
        cli("eval", str(results), "--refs", manifest, "--out", str(OUT / arm / f"report_{name}"),
            "--judge", "embedding")


def figures(report_dir: Path, results: Path, manifest: str) -> dict[str, float]:
    """The compared figures, from the report (labels) and the evidence scorer (explanations)."""
    from affect_llm.evaluation.synth_evidence import score_evidence

    report = json.loads((report_dir / "report.json").read_text())
    out = {f"{cue} family F1": report["by_cue"][cue]["family_f1"] for cue in ("conflict",) if cue in report["by_cue"]}
    out.update({f"{cue} accuracy": report["by_cue"][cue]["accuracy"] for cue in ("audio", "face", "text")
                if cue in report["by_cue"]})
    out["overall family F1"] = report["overall"]["family_f1"]
    out["answers describing an absent channel"] = report["absent_channels"]["overall"]["describing_absent"]
    refs = {json.loads(line)["id"]: json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    evidence = score_evidence(rows, refs)
    if "audio" in evidence["cue_channel"]:
        out["voice clips: voice described right"] = evidence["cue_channel"]["audio"]
    return out


def real_figures(report_dir: Path) -> dict[str, float]:
    report = json.loads((report_dir / "report.json").read_text())
    return {"accuracy": report["overall"]["accuracy"], "family F1": report["overall"]["family_f1"]}


def table() -> None:
    columns = {"supervised": (Path("outputs/report"), Path("outputs/results"), "synth_test"),
               "sft (continued)": (OUT / "sft", OUT / "sft", "synth"),
               "rl (grpo)": (OUT / "rl", OUT / "rl", "synth")}
    rows: dict[str, dict[str, float]] = {}
    for column, (reports, results, stem) in columns.items():
        report_dir = reports / "synth" if column == "supervised" else reports / "report_synth"
        if not (report_dir / "report.json").is_file():
            continue
        for key, value in figures(report_dir, results / f"{stem}.jsonl", SETS["synth"][0]).items():
            rows.setdefault(f"synthetic: {key}", {})[column] = value
        for name in ("polish", "pyfeat"):
            real_dir = reports / name if column == "supervised" else reports / f"report_{name}"
            if (real_dir / "report.json").is_file():
                for key, value in real_figures(real_dir).items():
                    rows.setdefault(f"{name}: {key}", {})[column] = value
    print("| figure | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for key, values in rows.items():
        print(f"| {key} | " + " | ".join(f"{values[c]:.3f}" if c in values else "-" for c in columns) + " |")
    timing = OUT / "timing.json"
    if timing.is_file():
        print("\nwall time per arm (s):", json.loads(timing.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true", help="print the table of arms already run")
    parser.add_argument("--rl-steps", type=int, help="steps of the RL stage (default: training/embedded_rl.yaml's)")
    parser.add_argument("--rl-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the RL arm's config, as `affect-llm train` takes it "
                             "(stages.0.grpo.skip_flat_groups=true); repeatable")
    args = parser.parse_args()
    if args.rl_steps is not None and args.rl_steps < 1:
        parser.error(f"--rl-steps must be at least 1, got {args.rl_steps}")
    if not args.table_only:
        if not (SUPERVISED / "final").is_dir():
            print(f"{SUPERVISED}/final is missing: run scripts/quickstart.sh first", file=sys.stderr)
            return 2
        OUT.mkdir(parents=True, exist_ok=True)
        rl_seconds = rl_arm(args.rl_steps, args.rl_override)
        steps = max(1, round(rl_seconds / sft_step_seconds()))
        started = time.perf_counter()
        cli("train", str(sft_config(steps)), "--resume")
        timing = {"rl": round(rl_seconds), "sft": round(time.perf_counter() - started), "sft_steps": steps}
        (OUT / "timing.json").write_text(json.dumps(timing) + "\n")
        explain_and_score("rl", Path("runs/embedded_rl/final"))
        explain_and_score("sft", Path("runs/embedded_sft_more/final"))
    table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
