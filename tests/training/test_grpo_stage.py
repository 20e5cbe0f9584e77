"""The reinforcement stage through the real CLI, on a tiny random model.

The task's answer depends on the media only: each clip is a tone whose pitch names its emotion (four
pitches, four emotion families; no words, no face). A supervised stage first teaches the answer's
format on noise clips that carry every label, so the policy writes well-formed answers whose labels
are at chance; the ``kind: grpo`` stage then learns the pitches from the label reward alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml
from trainhelpers import run_and_kill

from affect_llm.training.config import TrainConfig

PITCHES = {"happy": 220.0, "sad": 440.0, "angry": 880.0, "fearful": 1760.0}
SAMPLE_RATE = 16000


def write_wav(path: Path, signal: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(signal, -1, 1) * 32767).astype(np.int16).tobytes())


def tone(hz: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # one second
    return 0.3 * np.sin(2 * np.pi * hz * rng.uniform(0.97, 1.03) * t) + 0.01 * rng.standard_normal(t.size)


def tone_manifests(folder: Path, per_label: int = 12, val_per_label: int = 2, noise_clips: int = 8,
                   ) -> tuple[Path, Path]:
    """The tones with their labels; and noise clips, each once with every label (format only).

    Every noise clip carries all four labels, so the format stage's best answer for any clip is
    any label, equally likely: it learns the answer's form and nothing that tells the labels apart.
    """
    rng = np.random.default_rng(0)
    rows = []
    for label, hz in PITCHES.items():
        for i in range(per_label + val_per_label):
            write_wav(folder / f"{label}_{i}.wav", tone(hz, rng))
            rows.append({"id": f"{label}-{i}", "audio": f"{label}_{i}.wav", "labels": [label],
                         "split": "train" if i < per_label else "val"})
    true = folder / "tones.jsonl"
    true.write_text("".join(json.dumps(r) + "\n" for r in rows))
    noise_rows = []
    for i in range(noise_clips):
        write_wav(folder / f"noise_{i}.wav", 0.1 * rng.standard_normal(SAMPLE_RATE))
        noise_rows += [{"id": f"noise-{i}-{label}", "audio": f"noise_{i}.wav", "labels": [label], "split": "train"}
                       for label in PITCHES]
    noise = folder / "noise.jsonl"
    noise.write_text("".join(json.dumps(r) + "\n" for r in noise_rows))
    return true, noise


def grpo_config(folder: Path, true: Path, noise: Path, steps: int = 200) -> dict:
    return {
        "run_dir": str(folder / "run"),
        "seed": 0,
        "model": {"llm": "tiny:llm", "audio_encoder": "tiny:whisper", "face_encoder": "tiny:fer",
                  "audio_window_seconds": 2.0, "num_audio_tokens": 4, "num_face_tokens": 2},
        "data": {"datasets": {"tones": {"manifest": str(true)}, "noise": {"manifest": str(noise)}},
                 "num_frames": 2, "feature_cache": str(folder / "cache"), "decode_workers": 0,
                 "loader_workers": 0},
        "train": {"batch_size": 8, "log_every": 1, "checkpoint_every": 20, "eval_every": 20,
                  "tensorboard": False},
        "stages": [
            {"name": "format", "datasets": {"noise": 1.0}, "tasks": {"perceive": 1.0},
             "trainable": ["projectors", "llm"], "lr": 3.0e-3, "warmup_steps": 5, "steps": 300},
            {"name": "rl", "kind": "grpo", "datasets": {"tones": 1.0}, "tasks": {"perceive": 1.0},
             "trainable": ["projectors", "llm"], "lr": 1.0e-3, "warmup_steps": 10,
             "schedule": "cosine", "steps": steps,
             "grpo": {"group_size": 8, "max_new_tokens": 48, "temperature": 0.7,
                      "rewards": {"labels": 1.0, "format": 1.0}, "val_samples": 8,
                      "advantages": "positive"}},
        ],
    }


def _train(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "train", "config.yaml", *extra],
                          cwd=folder, capture_output=True, text=True)


def _rewards(run_dir: Path) -> dict[int, dict]:
    records = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["stage"] == "rl":
            records[record["step"]] = record
    return records


@pytest.mark.slow
def test_grpo_stage_learns_what_the_media_say(tmp_path: Path) -> None:
    true, noise = tone_manifests(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(grpo_config(tmp_path, true, noise)))
    done = _train(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _rewards(tmp_path / "run")
    first = np.mean([records[s]["reward/labels"] for s in range(1, 6)])
    last = np.mean([records[s]["reward/labels"] for s in range(len(records) - 4, len(records) + 1)])
    # Well-formed answers from the start (the format stage), labels near chance (0.25) ...
    assert np.mean([records[s]["reward/format"] for s in range(1, 6)]) >= 0.8
    assert first <= 0.45, first
    # ... and at least 0.8 of the maximum reward by the end, on the sampled answers and on validation.
    assert last >= 0.8, (first, last)
    summary = json.loads((tmp_path / "run" / "stages" / "rl" / "stage_done.json").read_text())
    assert summary["kind"] == "grpo" and summary["best_val_reward"] >= 0.8, summary
    best = json.loads((tmp_path / "run" / "stages" / "rl" / "best" / "affect_checkpoint.json").read_text())
    assert best["val_rewards"]["labels"] == summary["best_val_reward"]


def reference_guided_config(folder: Path, true: Path, noise: Path, steps: int, reference: bool) -> dict:
    """The RL stage alone, from a random policy that never writes a well-formed answer."""
    raw = grpo_config(folder, true, noise, steps=steps)
    stage = raw["stages"][1]
    stage["grpo"].update(group_size=4, max_new_tokens=24, reference_in_group=reference, advantages="normalised")
    stage.update(lr=3.0e-3, warmup_steps=0, schedule="constant")
    raw["stages"] = [stage]
    raw["train"].update(batch_size=4, checkpoint_every=0, eval_every=0)
    return raw


@pytest.mark.slow
def test_a_reference_in_the_group_teaches_what_sampling_never_finds(tmp_path: Path) -> None:
    """No supervised stage first: every sampled answer is unparseable, so every group's rewards are
    equal and plain GRPO has nothing to learn from. With each clip's reference answer in its group,
    the policy learns to write the answer (format reward from 0 to at least 0.15 by its last 40 of 200 steps)."""
    true, noise = tone_manifests(tmp_path, per_label=6, val_per_label=1)
    runs = {}
    for name, reference, steps in (("plain", False, 30), ("guided", True, 200)):
        folder = tmp_path / name
        folder.mkdir()
        raw = reference_guided_config(folder, true, noise, steps, reference)
        raw["data"]["feature_cache"] = str(tmp_path / "cache")
        (folder / "config.yaml").write_text(yaml.safe_dump(raw))
        done = _train(folder)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = _rewards(folder / "run")
    plain, guided = runs["plain"], runs["guided"]
    assert all(r["reward/format"] == 0.0 and r["grpo/loss"] == 0.0 and r["grpo/groups_with_signal"] == 0.0
               for r in plain.values())
    assert not any(key.startswith("grpo/reference") for key in plain[1])
    # The logged rewards are the sampled answers' (0 at first), the references' apart (all right: 1).
    assert np.mean([guided[s]["reward/format"] for s in range(1, 21)]) <= 0.1
    assert all(guided[s]["grpo/reference_reward"] == 1.0 for s in guided)
    # How fast depends on the packages' numerics: 0.69 at step 200 where this was first measured,
    # 0.23 over the last 40 steps with transformers 5.25 and peft 0.21 (0.00 to 0.09 per 20 steps at
    # twice the learning rate). Plain GRPO stays at exactly 0 either way.
    late = np.mean([guided[s]["reward/format"] for s in range(161, 201)])
    assert late >= 0.15, late


def test_grpo_settings_are_checked_when_the_config_is_read(tmp_path: Path) -> None:
    raw = grpo_config(tmp_path, tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    tasks = {"perceive", "reason", "evidence"}
    config = TrainConfig.from_dict(raw, tasks)
    assert config.stages[1].grpo.group_size == 8 and config.stages[0].grpo is None
    assert TrainConfig.from_dict(config.to_dict(), tasks).stages[1].grpo == config.stages[1].grpo
    for change, message in [
        ({"rewards": {"style": 1.0}}, "unknown rewards"),
        ({"group_size": 1}, "at least 2"),
        ({"reference_in_group": "yes"}, "expected true or false"),
        ({"temprature": 0.7}, "unknown keys"),
        ({"group_size": 2.5}, "grpo.group_size=2.5; expected a whole number"),
        ({"max_new_tokens": "1e3"}, "grpo.max_new_tokens='1e3'; expected a whole number"),
        ({"clip_epsilon": "nan"}, "grpo.clip_epsilon: expected a finite number"),
        ({"beta": float("nan")}, "grpo.beta: expected a finite number"),
    ]:
        bad = grpo_config(tmp_path, tmp_path / "a.jsonl", tmp_path / "b.jsonl")
        bad["stages"][1]["grpo"].update(change)
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict(bad, tasks)
    supervised_with_settings = grpo_config(tmp_path, tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    supervised_with_settings["stages"][0]["grpo"] = {"group_size": 4}
    with pytest.raises(ValueError, match="add kind: grpo"):
        TrainConfig.from_dict(supervised_with_settings, tasks)


def test_grpo_stage_resumes_at_its_step(tmp_path: Path) -> None:
    """Killed (SIGKILL, the whole process group) after a saved state and resumed, the stage logs the
    rewards and losses of an uninterrupted run: same clips, same sampled answers."""
    true, noise = tone_manifests(tmp_path, per_label=4, val_per_label=1)
    raw = grpo_config(tmp_path, true, noise, steps=6)
    raw["stages"][0]["steps"] = 30
    raw["stages"] = raw["stages"][:1]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert _train(tmp_path).returncode == 0
    logs = {}
    for name in ("straight", "killed"):
        folder = tmp_path / name
        folder.mkdir()
        rl = grpo_config(folder, true, noise, steps=6)
        rl["train"].update(batch_size=4, checkpoint_every=2, eval_every=0)
        rl["data"]["feature_cache"] = str(tmp_path / "cache")
        stage = {**rl["stages"][1], "init": str(tmp_path / "run" / "final")}
        stage["grpo"] = {**stage["grpo"], "group_size": 4, "max_new_tokens": 32}
        rl["stages"] = [stage]
        (folder / "config.yaml").write_text(yaml.safe_dump(rl))
        if name == "killed":
            command = [sys.executable, "-m", "affect_llm.cli.main", "train", "config.yaml"]
            last = run_and_kill(command, folder, dict(os.environ), folder / "run" / "log.jsonl", 3)
            assert not (folder / "run" / "stages" / "rl" / "stage_done.json").exists(), last
            done = _train(folder, "--resume")
        else:
            done = _train(folder)
        assert done.returncode == 0, done.stderr[-3000:]
        logs[name] = _rewards(folder / "run")
    assert sorted(logs["killed"]) == list(range(1, 7))
    for step, record in logs["straight"].items():
        for key in ("loss", "reward/labels", "reward/format", "grpo/completion_tokens"):
            assert logs["killed"][step][key] == pytest.approx(record[key], abs=1e-5), (step, key)


def test_micro_batch_is_not_part_of_what_a_stage_resumes_from(tmp_path: Path) -> None:
    """Lowering grpo.micro_batch after running out of memory changes memory, not the gradient: the
    stage on disk resumes with it."""
    from affect_llm.training.inputs import stage_inputs

    tasks = {"perceive", "reason", "evidence"}
    raw = grpo_config(tmp_path, tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    before = stage_inputs(TrainConfig.from_dict(raw, tasks), 1, {})
    raw["stages"][1]["grpo"]["micro_batch"] = 4
    assert stage_inputs(TrainConfig.from_dict(raw, tasks), 1, {}) == before
    raw["stages"][1]["grpo"]["group_size"] = 4
    assert stage_inputs(TrainConfig.from_dict(raw, tasks), 1, {}) != before
    grouped = stage_inputs(TrainConfig.from_dict(raw, tasks), 1, {})
    raw["stages"][1]["grpo"]["skip_flat_groups"] = True  # changes the step's gradient: a new stage
    assert stage_inputs(TrainConfig.from_dict(raw, tasks), 1, {}) != grouped


def test_flat_groups_skipped_are_not_scored(tmp_path: Path) -> None:
    """With grpo.skip_flat_groups, through the real CLI, each step scores only the rows of the groups
    whose rewards differ (one group when none do), and logs how many it scored."""
    true, noise = tone_manifests(tmp_path, per_label=4, val_per_label=1)
    raw = grpo_config(tmp_path, true, noise, steps=6)
    # After the format stage: well-formed answers, labels at chance, so some groups differ and some not.
    raw["stages"][1]["grpo"].update(group_size=4, max_new_tokens=32, skip_flat_groups=True)
    raw["train"].update(batch_size=4, checkpoint_every=0, eval_every=0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    done = _train(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _rewards(tmp_path / "run")
    assert sorted(records) == list(range(1, 7))
    clips, group = raw["train"]["batch_size"], raw["stages"][1]["grpo"]["group_size"]
    differing = {step: round(r["grpo/groups_with_signal"] * clips) for step, r in records.items()}
    for step, record in records.items():
        assert record["grpo/rows_scored"] == max(differing[step], 1) * group, record
    assert any(0 < n < clips for n in differing.values()), differing  # some steps skipped groups
