"""What a stage's result depends on, recorded beside it so that a rerun never reuses a stale stage.

A finished stage is skipped on rerun and ``--resume`` continues an interrupted one; both are only
right while the config that produced them is the one asked for. ``stage_inputs`` lists everything
that changes a stage's weights or its best-checkpoint choice (the model parts, LoRA, data reading,
the loop settings that matter, this stage and every stage before it, the manifests' hashes);
logging, checkpoint cadence and cache locations are left out, since they change no result.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from affect_llm.loading.checkpoint import checkpoint_fingerprint
from affect_llm.prompts import load_prompt
from affect_llm.training.config import StageConfig, TrainConfig

INPUTS_FILE = "stage_inputs.json"
# Loop settings that change the weights or which checkpoint is kept as best. The batch enters as the
# global batch (per-process batch x processes x accumulation): 1 process at B and 2 at B/2 see the
# same samples, so either may resume or reuse the other's stage.
RESULT_SETTINGS = ("precision", "weight_decay", "max_grad_norm", "eval_every", "val_max_samples")


# Stage fields that change speed and memory, not what is learned (as train.gradient_checkpointing
# and train.compile, which RESULT_SETTINGS leaves out): a stage reused or resumed with another value
# is the same stage.
LOOP_ONLY_STAGE_FIELDS = ("gradient_checkpointing", "compile")
# The same within a grpo stage's settings: micro_batch splits the scoring pass, the gradient is the
# same (what a run that ran out of memory lowers before --resume).
LOOP_ONLY_GRPO_FIELDS = ("micro_batch",)


def _result_fields(stage: StageConfig) -> dict[str, Any]:
    fields = {key: value for key, value in asdict(stage).items() if key not in LOOP_ONLY_STAGE_FIELDS}
    if isinstance(fields.get("grpo"), dict):
        fields["grpo"] = {k: v for k, v in fields["grpo"].items() if k not in LOOP_ONLY_GRPO_FIELDS}
    return fields


class StaleStageError(ValueError):
    """A stage on disk was produced by other inputs than the config now asks for."""


def stage_inputs(config: TrainConfig, index: int, manifest_hashes: dict[str, str], world_size: int = 1) -> dict[str, Any]:
    """The inputs that determine stage ``index``'s result (JSON-serialisable).

    Args:
        config: The run's config.
        index: The stage's position in ``config.stages``.
        manifest_hashes: sha256 of each dataset's manifest.
        world_size: Number of processes, which scales the global batch.
    """
    settings = asdict(config.train)
    data = asdict(config.data)
    return {
        "seed": config.seed,
        # The prompt file the version resolves to (the newest when none is named), with its hash: a
        # new version or an edited file changes what every stage learns to answer.
        "prompt": load_prompt("tasks", config.prompt_version).ref,
        "model": asdict(config.model),
        "lora": asdict(config.lora) if config.lora else None,
        # Cached features are rounded to 16 bits; features computed in the step are not.
        "data": {**{key: data[key] for key in ("datasets", "num_frames", "detect_faces")},
                 "features": "cached" if config.data.feature_cache else "computed_in_step"},
        "manifests": manifest_hashes,
        "train": {key: settings[key] for key in RESULT_SETTINGS},
        "global_batch": config.train.batch_size * config.train.grad_accum * world_size,
        "stages": [_result_fields(stage) for stage in config.stages[: index + 1]],
        "init_checkpoints": init_fingerprints(config, index),
    }


def init_fingerprints(config: TrainConfig, index: int) -> dict[str, str]:
    """Fingerprints of the named checkpoints that stage ``index`` and the stages before it start from.

    A stage that starts from a named checkpoint depends on that checkpoint's content, not its path;
    a checkpoint records these too, so its own fingerprint changes when what it grew from changed.
    """
    return {stage.name: checkpoint_fingerprint(stage.init) for stage in config.stages[: index + 1]
            if stage.init not in ("base", "previous") and Path(stage.init).is_dir()}


def changed_keys(recorded: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested JSON values differ, e.g. ``["stages.1.steps"]``."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        keys = sorted(set(recorded) | set(wanted))
        return [path for key in keys
                for path in changed_keys(recorded.get(key), wanted.get(key), f"{prefix}{key}.")]
    if isinstance(recorded, list) and isinstance(wanted, list) and len(recorded) == len(wanted):
        return [path for i, (a, b) in enumerate(zip(recorded, wanted, strict=True))
                for path in changed_keys(a, b, f"{prefix}{i}.")]
    return [] if recorded == wanted else [prefix.rstrip(".") or "(all)"]


def record_inputs(stage_dir: Path, inputs: dict[str, Any]) -> None:
    """Write the stage's inputs before it trains, so an interrupted stage is checked on resume too."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / INPUTS_FILE).write_text(json.dumps(inputs, indent=2, sort_keys=True, default=str) + "\n")


def check_inputs(stage_dir: Path, stage_name: str, inputs: dict[str, Any]) -> None:
    """Refuse to reuse ``stage_dir`` (finished or resumable) when its recorded inputs differ.

    Raises:
        StaleStageError: Naming the stage folder and every changed key, or saying that the folder
            records no inputs (written by an older version).
    """
    path = stage_dir / INPUTS_FILE
    advice = f"train into another run_dir, or delete {stage_dir} and the stages after it"
    if not path.is_file():
        raise StaleStageError(f"{stage_dir}: stage {stage_name!r} on disk records no inputs ({INPUTS_FILE}), so it "
                              f"cannot be checked against the config; {advice}")
    recorded = json.loads(path.read_text())
    # Round-trip through JSON so tuples and numbers compare as they were written.
    changed = changed_keys(recorded, json.loads(json.dumps(inputs, default=str)))
    if changed:
        raise StaleStageError(f"{stage_dir}: stage {stage_name!r} on disk was trained with other inputs "
                              f"(changed: {', '.join(changed)}); {advice}")
