"""What a curriculum needs of its data, checked before any model is built.

Every stage needs training rows in its datasets, and every task of a stage needs rows that can
answer it (labels for ``perceive``, an explanation for ``reason``, per-channel evidence for the
evidence task): otherwise the stage would fail after minutes of set-up, or silently never train a
task it names. Row ids must be unique across datasets, as features are found by id. ``affect-llm train --check`` and the recipe both run this.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from affect_llm.data.issues import RefusedInputError
from affect_llm.data.manifest import ManifestError, ManifestReader, ManifestRow
from affect_llm.prompts import load_prompt
from affect_llm.training.config import TrainConfig
from affect_llm.training.targets import answer_for

logger = logging.getLogger(__name__)
Splits = dict[str, dict[str, list[ManifestRow]]]


def load_splits(config: TrainConfig, *, strict: bool = False, refused: list[dict[str, Any]] | None = None) -> Splits:
    """Each dataset's training and validation rows (rows without a split belong to neither).

    Args:
        config: The training config.
        strict: Stop at the first refused manifest line instead of recording it.
        refused: Receives one dict per refused line (``dataset``, ``manifest``, ``line``, ``id``, ``field``,
            ``code``, ``reason``); each is also logged.

    Raises:
        FileNotFoundError: A manifest that does not exist (the message names the dataset).
        RefusedInputError: Under ``strict``, a line that breaks the schema (file, line and field named).
    """
    splits: Splits = {}
    for name, dataset in config.data.datasets.items():
        if not Path(dataset.manifest).is_file():
            raise FileNotFoundError(f"dataset {name!r}: manifest {dataset.manifest} not found (prepare it with "
                                    f"`affect-llm data prepare` or `affect-llm data synth`)")
        reader = ManifestReader(dataset.manifest, strict=strict)
        try:
            rows = list(reader)
        except ManifestError as error:
            raise RefusedInputError(f"dataset {name!r}: {error}") from error
        for issue in reader.issues:
            logger.warning("dataset %s: %s:%d refused: %s", name, dataset.manifest, issue.line, issue)
            if refused is not None:
                refused.append({"dataset": name, "manifest": str(dataset.manifest), **issue.to_dict()})
        splits[name] = {
            "train": [r for r in rows if r.split == dataset.train_split],
            "val": [r for r in rows if r.split == dataset.val_split],
        }
    return splits


def shared_id_problems(config: TrainConfig, splits: Splits) -> list[str]:
    """One line per pair of datasets (different manifests) whose training or validation rows share ids.

    Training looks up each row's features by its id: a second set with the same ids (two synthetic sets
    generated with the same id prefix, two corpora numbered from 0001) would silently train every
    shared id on one set's media with the other's answers.
    """
    owner: dict[str, str] = {}
    shared: dict[tuple[str, str], list[str]] = {}
    for name, parts in splits.items():
        manifest = Path(config.data.datasets[name].manifest).resolve()
        for row in (r for part in parts.values() for r in part):
            first = owner.setdefault(row.id, name)
            if first != name and Path(config.data.datasets[first].manifest).resolve() != manifest:
                shared.setdefault((first, name), []).append(row.id)
    problems = []
    for (first, second), ids in shared.items():
        examples = ", ".join(repr(i) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")
        problems.append(f"datasets {first!r} ({config.data.datasets[first].manifest}) and {second!r} "
                        f"({config.data.datasets[second].manifest}) share {len(ids)} row ids ({examples}): "
                        "training finds a row's features by its id, so every id must name one clip; give one "
                        "set other ids (`affect-llm data synth --id-prefix`, or rename them in its manifest)")
    return problems


def stage_data_problems(config: TrainConfig, splits: Splits) -> list[str]:
    """One line per stage without training rows, per task no training row of the stage can answer, and per
    pair of datasets whose row ids collide."""
    problems = shared_id_problems(config, splits)
    prompt = load_prompt("tasks", config.prompt_version)
    for name, dataset in config.data.datasets.items():
        if not splits[name]["train"]:
            problems.append(f"dataset {name!r} ({dataset.manifest}): no rows in split {dataset.train_split!r}")
    for stage in config.stages:
        rows = [row for name in stage.datasets for row in splits[name]["train"]]
        if not rows:
            continue  # already reported per dataset
        for task in stage.tasks:
            keys = prompt.task_keys(task)
            if not any(answer_for(row, keys) is not None for row in rows):
                problems.append(f"stage {stage.name!r}: task {task!r}: none of the {len(rows)} training rows of "
                                f"{sorted(stage.datasets)} can answer it (it asks for {list(keys)})")
    return problems
