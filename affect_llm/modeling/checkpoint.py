"""Checkpoints: safetensors only, loaded strictly, mergeable for serving.

Layout of a checkpoint folder::

    config.json              AffectConfig (component references, token ids, budgets)
    projectors.safetensors   every projector weight
    adapter/                 peft LoRA adapter of the LLM (when LoRA is on)
    llm/                     full LLM weights, when they are not the untouched pretrained ones
                             (tiny random LLM, fully trained LLM, merged LoRA)
    encoders.safetensors     encoder weights, when they are not the pretrained ones
    tokenizer files, processor_config.json
    affect_checkpoint.json   format version, what is stored, prompt refs, caller metadata
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from affect_llm.configuration import AffectConfig
from affect_llm.modeling.builder import fit_vocabulary, instantiate
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.trainable import is_peft_wrapped
from affect_llm.precision import Precision
from affect_llm.processing.processor import AffectProcessor

FORMAT_VERSION = 1
META_FILE = "affect_checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or does not match the model it is loaded into."""


def _state(module: torch.nn.Module, full: dict[str, torch.Tensor] | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
    """A submodule's weights, from the module itself or from a gathered full state dict under ``prefix``."""
    if full is None:
        items = module.state_dict().items()
    else:
        items = ((k[len(prefix):], v) for k, v in full.items() if k.startswith(prefix))
    return {k: v.detach().contiguous().cpu() for k, v in items}


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
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    references = model.config.component_paths or {}
    save_file(_state(model.projectors, state_dict, "projectors."), str(tmp / "projectors.safetensors"))
    llm_state = None if state_dict is None else _state(model.language_model, state_dict, "language_model.")
    stored = ["projectors"]
    lora = is_peft_wrapped(model)
    if lora:
        model.language_model.save_pretrained(tmp / "adapter", safe_serialization=True, state_dict=llm_state)
        stored.append("adapter")
    if store_llm or not references.get("llm"):
        if lora and store_llm:
            raise CheckpointError("store_llm with a LoRA adapter: merge the adapter first (merge_checkpoint)")
        llm = model.language_model.get_base_model() if lora else model.language_model
        state = base_llm_state(llm) if lora else llm_state
        llm.save_pretrained(tmp / "llm", safe_serialization=True, state_dict=state)
        stored.append("llm")
    own_encoders = [m for m in model.encoders if store_encoders or not references.get(m)]
    if own_encoders:
        save_file({f"{m}.{k}": v for m in own_encoders
                   for k, v in _state(model.encoders[m], state_dict, f"encoders.{m}.").items()},
                  str(tmp / "encoders.safetensors"))
        stored.append("encoders:" + ",".join(own_encoders))
    model.config.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    meta = {"format_version": FORMAT_VERSION, "stored": stored, "prompt": processor.prompt.ref, **(metadata or {})}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def base_llm_state(llm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LLM's own weights under their original names, with the injected LoRA layers taken out."""
    state = {}
    for key, value in _state(llm).items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


def read_metadata(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not an affect-llm checkpoint (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return meta


def checkpoint_fingerprint(path: str | Path) -> str:
    """A short hash of the checkpoint's metadata file: its config, manifest hashes, stage, step and validation loss.

    Cheap for any checkpoint size. A checkpoint retrained with another config or data, or to another
    validation loss, gets another fingerprint at the same path; the weights themselves are not hashed.
    """
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not an affect-llm checkpoint (no {META_FILE})")
    return hashlib.sha256(meta_path.read_bytes()).hexdigest()[:16]


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` that names every missing and unexpected key in its error."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{what}: missing keys {result.missing_keys[:10]}, unexpected keys {result.unexpected_keys[:10]}"
        )


def recorded_precision(path: str | Path) -> Precision:
    """The precision a checkpoint was saved with (float32, unquantized when it records none)."""
    return Precision.from_dict(AffectConfig.from_pretrained(path).precision)


def load_checkpoint(
    path: str | Path,
    models_dir: Path | None = None,
    trainable_lora: bool = False,
    precision: Precision | None = None,
    dequantize: bool = False,
) -> tuple[AffectForConditionalGeneration, AffectProcessor]:
    """Load a checkpoint written by :func:`save_checkpoint`; any key mismatch is an error.

    Args:
        precision: How to hold the weights; None follows what the checkpoint records (a QLoRA
            stage reloads its LLM in 4-bit, a bf16 run in bf16).
        trainable_lora: Attach the adapter for further training (a 4-bit LLM is prepared for
            k-bit training first, as for a fresh adapter).
        dequantize: Load a 4-bit LLM as it was trained, then replace its NF4 layers by ordinary
            linear layers holding the dequantised weights, before the adapter is attached (merging).
    """
    path = Path(path)
    meta = read_metadata(path)
    stored = meta["stored"]
    config = AffectConfig.from_pretrained(path)
    processor = AffectProcessor.from_pretrained(path)
    precision = precision or Precision.from_dict(config.precision)
    references = dict(config.component_paths or {})
    if "llm" in stored:
        config.component_paths = {**references, "llm": str(path / "llm")}
    model = instantiate(config, models_dir, precision)
    model.config.component_paths = references
    fit_vocabulary(model, len(processor.tokenizer))
    load_strict(model.projectors, load_file(str(path / "projectors.safetensors")), f"{path}/projectors.safetensors")
    encoder_entry = next((s for s in stored if s.startswith("encoders:")), None)
    if encoder_entry:
        state = load_file(str(path / "encoders.safetensors"))
        for modality in encoder_entry.split(":", 1)[1].split(","):
            prefix = f"{modality}."
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            load_strict(model.encoders[modality], own, f"{path}/encoders.safetensors [{modality}]")
    if dequantize and precision.is_4bit:
        model.language_model.dequantize()
    if "adapter" in stored:
        attach_adapter(model, path / "adapter", trainable_lora)
    return model, processor


def attach_adapter(model: AffectForConditionalGeneration, adapter_dir: Path, trainable: bool) -> None:
    """Wrap the LLM with the saved LoRA config and load the adapter weights strictly."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training, set_peft_model_state_dict

    lora_config = LoraConfig.from_pretrained(adapter_dir)
    lora_config.inference_mode = not trainable
    llm = model.language_model
    if trainable and getattr(llm, "is_loaded_in_4bit", False):
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    model.language_model = get_peft_model(llm, lora_config)
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model.language_model, state)
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing_lora:
        raise CheckpointError(
            f"{adapter_dir}: missing LoRA keys {missing_lora[:10]}, unexpected keys {result.unexpected_keys[:10]}"
        )


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
    meta = {k: v for k, v in meta.items() if k not in ("format_version", "stored", "prompt")}
    meta["merged_from"] = str(path)
    return save_checkpoint(model, processor, out_dir, metadata=meta, store_llm=True, store_encoders=True)

