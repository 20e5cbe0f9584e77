"""Checkpoints: written atomically, loaded strictly in the recorded precision, mergeable for serving.

A checkpoint folder is what ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoProcessor`` read
(after ``import affect_llm``); its weights layout is described in :mod:`affect_llm.modeling.pretrained`.
Besides the model and processor files it holds ``affect_checkpoint.json``: the format version, the
task prompt's ref, the precision, and what the caller recorded (stage, step, validation loss, the
training config). Folders written in format 1 are converted once with ``affect-llm checkpoint
upgrade OLD NEW`` (:mod:`affect_llm.loading.upgrade`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from affect_llm.configuration import AffectConfig
from affect_llm.fileio import (
    atomic_write_bytes,
    finish_folder_swap,
    os_errors_as_oserror,
    share_written_weights,
    swap_folder_into_place,
)
from affect_llm.hashing import file_sha256
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.pretrained import ADAPTER_FOLDER, LLM_FOLDER, CheckpointError
from affect_llm.modeling.trainable import is_peft_wrapped
from affect_llm.precision import Precision
from affect_llm.processing.processor import AffectProcessor
from affect_llm.references import resolve_model_path

FORMAT_VERSION = 2
META_FILE = "affect_checkpoint.json"

__all__ = ["CheckpointError", "checkpoint_fingerprint", "load_checkpoint", "load_prompt_embedder", "merge_checkpoint",
           "read_metadata", "recorded_precision", "save_checkpoint", "served_llm_dir"]


def save_checkpoint(
    model: AffectForConditionalGeneration,
    processor: AffectProcessor,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
    store_llm: bool = False,
    store_encoders: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically (a temporary folder renamed into place).

    Args:
        store_llm: Save the full LLM even when it comes from a pretrained reference (it was trained).
        store_encoders: Save encoder weights even when they come from pretrained references.
        state_dict: The model's full state dict gathered across ranks (FSDP, ZeRO-3); None reads the
            module's own weights.
    """
    out_dir = Path(out_dir)
    finish_interrupted_save(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with os_errors_as_oserror(tmp):
        model.save_pretrained(tmp, state_dict=state_dict, store_llm=store_llm, store_encoders=store_encoders)
    processor.save_pretrained(tmp)
    # "adapter" records whether adapter/ belongs to the checkpoint: a copy that lost it must not load
    # as the base model without a word.
    meta = {"format_version": FORMAT_VERSION, "prompt": processor.prompt.ref,
            "precision": model.config.precision, **(metadata or {}), "adapter": is_peft_wrapped(model)}
    share_written_weights(tmp)
    # Written last, whole or not at all: a folder with it holds every part (finish_interrupted_save).
    atomic_write_bytes(tmp / META_FILE, (json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n").encode())
    swap_folder_into_place(tmp, out_dir, META_FILE)
    return out_dir


def finish_interrupted_save(out_dir: Path) -> None:
    """Complete a :func:`save_checkpoint` that a kill cut between its two renames (the metadata file
    is written last: a folder with it is complete)."""
    finish_folder_swap(out_dir, META_FILE)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``affect_checkpoint.json``.

    Raises:
        FileNotFoundError: If the folder is not a checkpoint.
        CheckpointError: If it was written in another format (format 1 names the upgrade command).
    """
    finish_interrupted_save(Path(path))
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not an affect-llm checkpoint (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    version = meta.get("format_version")
    if version == 1:
        raise CheckpointError(f"{path}: written in checkpoint format 1; convert it once with "
                              f"`affect-llm checkpoint upgrade {path} {path}-v2`")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {version}, expected {FORMAT_VERSION}")
    return meta


def checkpoint_fingerprint(path: str | Path) -> str:
    """A short hash of the checkpoint's metadata file: its config, manifest hashes, stage, step and validation loss.

    Cheap for any checkpoint size. A checkpoint retrained with another config or data, or to another
    validation loss, gets another fingerprint at the same path; the weights themselves are not hashed.
    """
    finish_interrupted_save(Path(path))
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not an affect-llm checkpoint (no {META_FILE})")
    return file_sha256(meta_path)[:16]


def recorded_precision(path: str | Path) -> Precision:
    """The precision a checkpoint was saved with (float32, unquantized when it records none)."""
    return Precision.from_dict(AffectConfig.from_pretrained(path).precision)


def load_checkpoint(
    path: str | Path,
    models_dir: Path | None = None,
    trainable_lora: bool = False,
    precision: Precision | None = None,
    dequantize: bool = False,
    device: torch.device | str | None = None,
) -> tuple[AffectForConditionalGeneration, AffectProcessor]:
    """Load model and processor of a checkpoint; any key or token-id mismatch is an error.

    Args:
        precision: How to hold the weights; None follows what the checkpoint records (a QLoRA
            stage reloads its LLM in 4-bit, a bf16 run in bf16).
        trainable_lora: Attach the adapter for further training.
        dequantize: Replace a 4-bit LLM's NF4 layers by the dequantised weights before the adapter
            is attached (merging).
        device: Where to put the model (None: leave it on the CPU).
    """
    path = Path(path)
    if read_metadata(path).get("adapter") and not (Path(path) / ADAPTER_FOLDER).is_dir():
        raise CheckpointError(f"{Path(path) / ADAPTER_FOLDER}: missing, but the checkpoint was saved with a LoRA "
                              "adapter (affect_checkpoint.json: adapter: true); without it the model is the "
                              "base model: copy the whole checkpoint folder again")
    processor = AffectProcessor.from_pretrained(path)
    model = AffectForConditionalGeneration.from_pretrained(
        path, precision=precision, models_dir=models_dir, trainable_lora=trainable_lora, dequantize=dequantize,
        device_map=device,
    )
    if len(processor.tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise CheckpointError(f"{path}: the tokenizer has {len(processor.tokenizer)} tokens but the LLM's "
                              f"embeddings only {model.get_input_embeddings().weight.shape[0]}")
    return model, processor


def load_prompt_embedder(
    path: str | Path,
    models_dir: Path | None = None,
    precision: Precision | None = None,
    device: torch.device | str | None = None,
) -> tuple[AffectForConditionalGeneration, AffectProcessor]:
    """What an external engine (vLLM) needs beside the LLM: embedding table, encoders, projectors.

    The LLM's other weights are never loaded (they stay on the meta device); the engine holds them.

    Raises:
        CheckpointError: If the checkpoint holds an unmerged LoRA adapter (the message names ``merge``).
    """
    path = Path(path)
    if read_metadata(path).get("adapter") and not (Path(path) / ADAPTER_FOLDER).is_dir():
        raise CheckpointError(f"{Path(path) / ADAPTER_FOLDER}: missing, but the checkpoint was saved with a LoRA "
                              "adapter (affect_checkpoint.json: adapter: true); without it the model is the "
                              "base model: copy the whole checkpoint folder again")
    processor = AffectProcessor.from_pretrained(path)
    model = AffectForConditionalGeneration.from_pretrained(
        path, precision=precision, models_dir=models_dir, device_map=device, embeddings_only=True)
    return model, processor


def served_llm_dir(checkpoint: str | Path, models_dir: Path | None = None) -> str:
    """The plain LLM folder an external engine loads for ``checkpoint``.

    Raises:
        CheckpointError: If the checkpoint holds an unmerged LoRA adapter.
    """
    checkpoint = Path(checkpoint)
    read_metadata(checkpoint)
    if (checkpoint / ADAPTER_FOLDER).is_dir():
        raise CheckpointError(f"{checkpoint}: holds a LoRA adapter; vLLM serves merged weights: run "
                              f"`affect-llm merge {checkpoint} {checkpoint}-merged` and pass the merged folder")
    if (checkpoint / LLM_FOLDER).is_dir():
        return str(checkpoint / LLM_FOLDER)
    reference = (AffectConfig.from_pretrained(checkpoint).component_paths or {}).get("llm")
    if not reference:
        raise CheckpointError(f"{checkpoint}/config.json: component_paths.llm is empty and no {LLM_FOLDER}/ is stored")
    return resolve_model_path(reference, models_dir)


def merge_checkpoint(path: str | Path, out_dir: str | Path, models_dir: Path | None = None) -> Path:
    """Fold the LoRA adapter into the LLM and write a standalone checkpoint whose ``llm/`` serves as is.

    A QLoRA checkpoint is merged into its dequantised base: the LLM is loaded in 4-bit as it was
    trained, each NF4 layer is dequantised to ``dtype`` (the exact weights the adapter was trained
    against), the adapter is added, and the merged LLM is saved unquantized in ``dtype``.
    """
    precision = recorded_precision(path)
    model, processor = load_checkpoint(path, models_dir, precision=precision, dequantize=True)
    if is_peft_wrapped(model):
        model.language_model = model.language_model.merge_and_unload()
    model.config.precision = replace(precision, quantization="none").to_dict()
    meta = read_metadata(path)
    meta = {k: v for k, v in meta.items() if k not in ("format_version", "prompt", "precision")}
    meta["merged_from"] = str(path)
    return save_checkpoint(model, processor, out_dir, metadata=meta, store_llm=True, store_encoders=True)
