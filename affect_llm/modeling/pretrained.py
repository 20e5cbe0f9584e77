"""The checkpoint format of :class:`~affect_llm.modeling.model.AffectForConditionalGeneration`.

What ``save_pretrained`` writes is what ``from_pretrained`` (and so ``AutoModelForCausalLM``) reads::

    config.json         AffectConfig: component references, token ids and budgets, precision
    model.safetensors   the weights this checkpoint owns: every projector, and the encoders that are
                        not their referenced pretrained weights (trained, or built from a config)
    llm/                a plain HF causal LM, when the LLM is not its referenced pretrained weights
                        (trained in full, merged with its adapter, or built from a config)
    adapter/            the peft LoRA adapter of the LLM, when there is one

A checkpoint holds no copy of a pretrained part it did not change: ``component_paths`` references it
(an embedded model name, a folder or a hub id) and loading resolves the reference on the machine at
hand. Every key of ``model.safetensors`` must find its parameter and every owned parameter its key.

Shape letters: none (weights only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from affect_llm.configuration import AffectConfig
from affect_llm.fileio import os_error_of
from affect_llm.precision import Precision
from affect_llm.references import resolve_model_path

WEIGHTS_FILE = "model.safetensors"
LLM_FOLDER = "llm"
ADAPTER_FOLDER = "adapter"
# Keyword arguments the auto classes pass for hub downloads; a checkpoint here is a local folder.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder",
              "trust_remote_code", "proxies", "_from_auto", "_commit_hash", "adapter_kwargs")


# What to do about damaged weights in a folder that may be an embedded model's (or a checkpoint's llm/).
PREPARED_REMEDY = ("an embedded model is converted again by `affect-llm models prepare --verify`; a checkpoint's "
                   "must be copied or saved again")


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or does not match the model it is loaded into."""


@contextlib.contextmanager
def weights_read_from(where: str | Path, remedy: str = "copy or save the checkpoint again") -> Iterator[None]:
    """Name the file or folder whose weights are damaged: safetensors' own error names none.

    Raises:
        CheckpointError: A safetensors file that does not parse (cut short by a full disk or a copy).
        OSError: A read error that safetensors wrapped (:func:`affect_llm.fileio.os_error_of`).
    """
    try:
        yield
    except Exception as error:
        if type(error).__name__ != "SafetensorError":
            raise
        os_error = os_error_of(error, where)
        if os_error is not None:
            raise os_error from error
        raise CheckpointError(f"{where}: damaged weights ({error}); {remedy}") from error


def load_language_model(reference: str, precision: Precision) -> PreTrainedModel:
    """A pretrained causal LM (folder or hub id) in the precision's dtype, NF4 when it asks for 4-bit.

    Raises:
        CheckpointError: If the weights do not match the LLM's config (missing or unexpected keys).
    """
    with weights_read_from(reference, PREPARED_REMEDY):
        model, info = AutoModelForCausalLM.from_pretrained(
            reference, dtype=precision.llm_torch_dtype(), quantization_config=precision.bitsandbytes_config(),
            output_loading_info=True,
        )
    if info["missing_keys"] or info["unexpected_keys"]:
        raise CheckpointError(f"{reference}: LLM weights do not match its config: missing "
                              f"{sorted(info['missing_keys'])[:10]}, unexpected {sorted(info['unexpected_keys'])[:10]}")
    return model


def load_embedding_table_only(reference: str, precision: Precision) -> PreTrainedModel:
    """An LLM whose only materialised weight is its input embedding table; the rest stays on the meta device.

    What building prompt embeddings for an external engine (vLLM) needs: a 7B LLM's layers never
    enter this process's memory.
    """
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.utils import cached_file

    config = AutoConfig.from_pretrained(reference)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(config, dtype=precision.llm_torch_dtype())
    embedding = llm.get_input_embeddings()
    name = next(n for n, p in llm.named_parameters() if p is embedding.weight)
    index = cached_file(reference, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index is not None:
        import json

        shard = json.loads(Path(index).read_text())["weight_map"][name]
        weights_file = cached_file(reference, shard)
    else:
        weights_file = cached_file(reference, WEIGHTS_FILE)
    with safe_open(weights_file, framework="pt") as handle:
        if name not in set(handle.keys()):
            raise CheckpointError(f"{weights_file}: no tensor {name!r} (the LLM's input embeddings)")
        table = handle.get_tensor(name).to(precision.llm_torch_dtype())
    embedding.weight = nn.Parameter(table, requires_grad=False)
    return llm


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` that names every missing and unexpected key in its error."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{what}: missing keys {result.missing_keys[:10]}, "
                              f"unexpected keys {result.unexpected_keys[:10]}")


def _state(module: nn.Module, full: dict[str, torch.Tensor] | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
    """A submodule's weights, from the module itself or from a gathered full state dict under ``prefix``."""
    items = module.state_dict().items() if full is None else (
        (k[len(prefix):], v) for k, v in full.items() if k.startswith(prefix))
    return {k: v.detach().contiguous().cpu() for k, v in items}


def _is_peft(llm: nn.Module) -> bool:
    return hasattr(llm, "peft_config")


def base_llm_state(llm: nn.Module, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The LLM's own weights under their original names, with the injected LoRA layers taken out."""
    state = {}
    for key, value in _state(llm, full, "").items():
        if "lora_" in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        state[key] = value
    return state


def save_affect_checkpoint(
    model: Any,
    save_directory: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    store_llm: bool = False,
    store_encoders: bool = False,
    **_: Any,
) -> None:
    """Write config, owned weights, the LLM when it is owned, and the adapter.

    Args:
        model: An ``AffectForConditionalGeneration``.
        state_dict: The model's full state dict gathered across ranks (FSDP, ZeRO-3); None reads
            the modules' own weights.
        store_llm: Save the full LLM even when it comes from a pretrained reference (it was trained
            or merged).
        store_encoders: Save encoder weights even when they come from pretrained references.

    Raises:
        CheckpointError: ``store_llm`` with an unmerged LoRA adapter on the LLM.
    """
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    references = model.config.component_paths or {}
    llm = model.language_model
    lora = _is_peft(llm)
    owned = {f"projectors.{k}": v for k, v in _state(model.projectors, state_dict, "projectors.").items()}
    for modality, encoder in model.encoders.items():
        if store_encoders or not references.get(modality):
            prefix = f"encoders.{modality}."
            owned.update({prefix + k: v for k, v in _state(encoder, state_dict, prefix).items()})
    save_file(owned, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    llm_state = None if state_dict is None else _state(llm, state_dict, "language_model.")
    if lora:
        llm.save_pretrained(out / ADAPTER_FOLDER, safe_serialization=True, state_dict=llm_state)
    if store_llm or not references.get("llm"):
        if lora and store_llm:
            raise CheckpointError("store_llm with a LoRA adapter: merge the adapter first (affect-llm merge)")
        base = llm.get_base_model() if lora else llm
        state = base_llm_state(llm, llm_state) if lora else llm_state
        base.save_pretrained(out / LLM_FOLDER, safe_serialization=True, state_dict=state)
    model.config.save_pretrained(out)


def load_affect_checkpoint(
    cls: type,
    path: str | Path,
    config: AffectConfig | None = None,
    precision: Precision | None = None,
    dtype: Any = None,
    models_dir: Path | None = None,
    trainable_lora: bool = False,
    dequantize: bool = False,
    device_map: Any = None,
    embeddings_only: bool = False,
    **kwargs: Any,
) -> Any:
    """Load what :func:`save_affect_checkpoint` wrote; any key mismatch is an error.

    Args:
        cls: The model class.
        path: The checkpoint folder.
        config: Its config, when the caller already read it (the auto classes do).
        precision: How to hold the weights; None follows what the checkpoint records.
        dtype: Overrides the recorded LLM dtype (the ``from_pretrained`` convention), when
            ``precision`` is not given.
        models_dir: Where embedded references resolve.
        trainable_lora: Attach the adapter for further training (a 4-bit LLM is prepared for
            k-bit training first, as for a fresh adapter).
        dequantize: Load a 4-bit LLM as trained, then replace its NF4 layers by plain linear layers
            holding the dequantised weights, before the adapter is attached (for merging).
        device_map: One device (``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``"auto"``: CUDA when present).
        embeddings_only: Load only the LLM's embedding table (with encoders and projectors): the
            prompt embedder of an external engine. The checkpoint must hold no adapter.

    Raises:
        CheckpointError: A part without weights, a mismatching key, or an unsupported argument.
    """
    unsupported = sorted(set(kwargs) - set(HUB_KWARGS))
    if unsupported:
        raise TypeError(f"from_pretrained: unsupported arguments {unsupported} for an affect-llm checkpoint")
    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}; not an affect-llm checkpoint in this format")
    config = config if config is not None else AffectConfig.from_pretrained(path)
    if precision is None:
        precision = Precision.from_dict(config.precision)
        if dtype is not None:
            precision = precision.overridden(dtype=str(dtype).removeprefix("torch."))
    references = dict(config.component_paths or {})
    # A part whose weights the checkpoint holds is built from its config and loaded from here: a merged
    # checkpoint copied to a machine without the embedded models (or the hub) loads as it is.
    stored = _stored_parts(path)
    resolved = {part: resolve_model_path(ref, models_dir) for part, ref in references.items()
                if ref and part not in stored}
    if "llm" in stored:
        resolved["llm"] = str(path / LLM_FOLDER)
    config.component_paths = resolved
    if embeddings_only and (path / ADAPTER_FOLDER).is_dir():
        raise CheckpointError(f"{path}: holds a LoRA adapter; an external engine serves merged weights: run "
                              f"`affect-llm merge {path} {path}-merged` and pass the merged folder")
    try:
        model = cls.from_components(config, precision, embeddings_only=embeddings_only)
    finally:
        config.component_paths = references
    model.config.component_paths = references
    _load_owned_weights(model, path, references)
    if dequantize and precision.is_4bit:
        model.language_model.dequantize()
    if (path / ADAPTER_FOLDER).is_dir():
        attach_adapter(model, path / ADAPTER_FOLDER, trainable_lora)
    if device_map is not None:
        device = _device(device_map)
        parts = [model.encoders, model.projectors, model.get_input_embeddings()] if embeddings_only else [model]
        for part in parts:
            part.to(device)
    return model


def _stored_parts(path: Path) -> set[str]:
    """``llm`` when the checkpoint stores its LLM, and each modality whose encoder weights it holds."""
    from safetensors import safe_open

    where = path / WEIGHTS_FILE
    with weights_read_from(where), safe_open(str(where), framework="pt") as weights:
        keys = list(weights.keys())
    parts = {key.split(".", 2)[1] for key in keys if key.startswith("encoders.") and key.count(".") >= 2}
    return parts | ({"llm"} if (path / LLM_FOLDER).is_dir() else set())


def _device(device_map: Any) -> torch.device:
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, (str, torch.device)):
        return torch.device(device_map)
    raise TypeError(f"device_map={device_map!r}: an affect-llm model loads onto one device ('cpu', 'cuda', 'auto')")


def _load_owned_weights(model: Any, path: Path, references: dict[str, Any]) -> None:
    where = f"{path}/{WEIGHTS_FILE}"
    with weights_read_from(where):
        state = load_file(where)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        group = f"encoders.{rest.split('.', 1)[0]}" if head == "encoders" else head
        groups.setdefault(group, {})[key[len(group) + 1:]] = value
    stray = sorted(set(groups) - {"projectors"} - {f"encoders.{m}" for m in model.encoders})
    if stray:
        raise CheckpointError(f"{where}: weights of parts this model does not have: {stray}")
    load_strict(model.projectors, groups.get("projectors", {}), f"{where} [projectors]")
    for modality, encoder in model.encoders.items():
        own = groups.get(f"encoders.{modality}")
        if own is not None:
            load_strict(encoder, own, f"{where} [encoders.{modality}]")
        elif not references.get(modality):
            raise CheckpointError(f"{where}: the {modality} encoder has no reference and no weights here")


def attach_adapter(model: Any, adapter_dir: Path, trainable: bool) -> None:
    """Wrap the LLM with the saved LoRA config and load the adapter weights strictly."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training, set_peft_model_state_dict

    lora_config = LoraConfig.from_pretrained(adapter_dir)
    lora_config.inference_mode = not trainable
    llm = model.language_model
    if trainable and getattr(llm, "is_loaded_in_4bit", False):
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    model.language_model = get_peft_model(llm, lora_config)
    with weights_read_from(adapter_dir / "adapter_model.safetensors"):
        state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model.language_model, state)
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing_lora:
        raise CheckpointError(f"{adapter_dir}: missing LoRA keys {missing_lora[:10]}, "
                              f"unexpected keys {result.unexpected_keys[:10]}")
