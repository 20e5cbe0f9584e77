"""Convert a checkpoint written in format 1 into the current format, once.

Format 1 kept projectors and encoders in their own safetensors files, the processor in a private
JSON layout that referenced the task prompt by version, and named the video tower's config
``vision_config``. The conversion moves every tensor unchanged, so the converted checkpoint gives the
same answers::

    affect-llm checkpoint upgrade runs/old/final runs/old/final-v2
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from affect_llm.fileio import share_written_weights
from affect_llm.loading.checkpoint import FORMAT_VERSION, META_FILE, CheckpointError
from affect_llm.modeling.pretrained import ADAPTER_FOLDER, LLM_FOLDER, WEIGHTS_FILE
from affect_llm.processing.feature_extraction import AffectFeatureExtractor
from affect_llm.processing.processor import AffectProcessor, prompt_record
from affect_llm.prompts import load_prompt


def upgrade_checkpoint(old: str | Path, new: str | Path) -> Path:
    """Write ``new`` in the current format from the format-1 checkpoint ``old``.

    Raises:
        CheckpointError: If ``old`` is not a format-1 checkpoint, ``new`` exists, or the task prompt
            it names is no longer shipped with the identical text.
    """
    old, new = Path(old), Path(new)
    meta = _read_v1_meta(old)
    if new.exists():
        raise CheckpointError(f"{new}: already exists; choose a new folder for the converted checkpoint")
    tmp = new.with_name(new.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_upgraded(old, tmp, meta)
    except BaseException:
        # A half-converted folder is of no use: nothing but ``new`` (whole) is left behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, new)
    return new


def _write_upgraded(old: Path, tmp: Path, meta: dict[str, Any]) -> None:
    stored = meta["stored"]
    config = json.loads((old / "config.json").read_text())
    if "vision_config" in config:
        config["video_config"] = config.pop("vision_config")
    config.setdefault("precision", {"dtype": "float32", "quantization": "none", "encoder_dtype": None})
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(_owned_weights(old, stored), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    for folder, part in ((LLM_FOLDER, "llm"), (ADAPTER_FOLDER, "adapter")):
        if part in stored:
            shutil.copytree(old / folder, tmp / folder)
    _convert_processor(old, tmp, config)
    new_meta = {k: v for k, v in meta.items() if k != "stored"}
    new_meta.update(format_version=FORMAT_VERSION, precision=config["precision"], upgraded_from=str(old))
    (tmp / META_FILE).write_text(json.dumps(new_meta, indent=2, sort_keys=True, default=str) + "\n")
    share_written_weights(tmp)


def _read_v1_meta(old: Path) -> dict[str, Any]:
    meta_path = old / META_FILE
    if not old.exists():
        raise CheckpointError(f"{old}: no such checkpoint folder")
    if not old.is_dir():
        raise CheckpointError(f"{old}: a file, not a checkpoint folder")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: not an affect-llm checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{meta_path}: not readable as JSON ({error}); the checkpoint's metadata is damaged") from error
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: holds a {type(meta).__name__}, not the checkpoint's metadata object")
    if meta.get("format_version") != 1:
        raise CheckpointError(f"{meta_path}: format_version {meta.get('format_version')}; only format 1 is upgraded")
    stored = meta.get("stored")
    if not isinstance(stored, list) or not all(isinstance(entry, str) for entry in stored):
        raise CheckpointError(f"{meta_path}: field 'stored' must list what the checkpoint holds, got {stored!r}")
    return meta


def _owned_weights(old: Path, stored: list[str]) -> dict[str, Any]:
    owned = {f"projectors.{k}": v for k, v in load_file(str(old / "projectors.safetensors")).items()}
    if any(entry.startswith("encoders:") for entry in stored):
        # Format 1 keyed encoder weights "<modality>.<name>".
        owned.update({f"encoders.{k}": v for k, v in load_file(str(old / "encoders.safetensors")).items()})
    return owned


def _convert_processor(old: Path, tmp: Path, config: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    saved = json.loads((old / "processor_config.json").read_text())
    prompt = load_prompt(saved["prompt"]["name"], saved["prompt"]["version"])
    if prompt.ref != saved["prompt"]["ref"]:
        raise CheckpointError(f"{old}/processor_config.json: saved with prompt {saved['prompt']['ref']} but the "
                              f"shipped prompt is {prompt.ref}")
    budgets = {k: v for k, v in saved["num_tokens"].items() if config.get(f"{k}_config")}
    processor = AffectProcessor(AffectFeatureExtractor(**saved["settings"]), AutoTokenizer.from_pretrained(old),
                                task_prompt=prompt_record(prompt), num_tokens=budgets)
    processor.save_pretrained(tmp)
