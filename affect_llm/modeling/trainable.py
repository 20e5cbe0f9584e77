"""What trains: named parameter groups chosen once, LoRA through peft, gradient checkpointing.

Groups: ``encoders`` (all media encoders), ``projectors``, ``llm`` (every LLM weight) and ``lora``
(the LoRA adapter on the LLM, after :func:`apply_lora`).
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from affect_llm.modeling.model import AffectForConditionalGeneration

TRAINABLE_GROUPS: tuple[str, ...] = ("encoders", "projectors", "llm", "lora")
logger = logging.getLogger(__name__)


@dataclass
class LoraSettings:
    """LoRA on the LLM only.

    Attributes:
        r: Rank.
        alpha: Scaling numerator (``alpha / r`` multiplies the update).
        dropout: Dropout on the LoRA input.
        target_modules: Module names to adapt, or ``all-linear`` (every linear layer but the head).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = field(default="all-linear")


def is_peft_wrapped(model: AffectForConditionalGeneration) -> bool:
    return hasattr(model.language_model, "peft_config")


def is_quantized(llm: nn.Module) -> bool:
    """Whether the LLM was loaded in 4-bit or 8-bit (bitsandbytes): its weights are not plain floats."""
    return getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False)


def merge_lora_for_inference(model: AffectForConditionalGeneration) -> bool:
    """Fold the LoRA adapter into the LLM's weights, in memory, for generation; True when it did.

    Generation then runs the base linear layers only: attached, each of them adds two rank-r
    matmuls per token, a large share of a small model's decoding step. A 4-bit LLM keeps its
    adapter attached, since folding it into NF4 weights would round the update away.
    """
    llm = model.language_model
    if not is_peft_wrapped(model) or is_quantized(llm):
        return False
    model.language_model = llm.merge_and_unload()
    return True


def apply_lora(model: AffectForConditionalGeneration, settings: LoraSettings) -> None:
    """Wrap the LLM in a peft LoRA model (4-bit LLMs are prepared for k-bit training first)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_peft_wrapped(model):
        raise ValueError("the LLM already carries a LoRA adapter")
    llm = model.language_model
    if is_quantized(llm):
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    lora_config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, task_type="CAUSAL_LM",
    )
    model.language_model = get_peft_model(llm, lora_config)


def adapter_settings_mismatch(model: AffectForConditionalGeneration, settings: LoraSettings) -> str | None:
    """How a loaded adapter's rank, alpha and dropout differ from ``settings`` (None when they agree).

    A stage that continues from a checkpoint trains the adapter saved there, with the settings saved
    beside it; a config's ``lora`` block shapes only a fresh adapter, so a difference is worth a line.
    """
    if not is_peft_wrapped(model):
        return None
    saved = model.language_model.peft_config["default"]
    pairs = {"r": (saved.r, settings.r), "alpha": (saved.lora_alpha, settings.alpha),
             "dropout": (saved.lora_dropout, settings.dropout)}
    differing = [f"{name} {have} (config: {want})" for name, (have, want) in pairs.items() if have != want]
    return ", ".join(differing) or None


def group_parameters(model: AffectForConditionalGeneration) -> dict[str, list[nn.Parameter]]:
    """Every parameter, by group."""
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in TRAINABLE_GROUPS}
    groups["encoders"] = list(model.encoders.parameters())
    groups["projectors"] = list(model.projectors.parameters())
    for name, param in model.language_model.named_parameters():
        groups["lora" if "lora_" in name else "llm"].append(param)
    return groups


def set_trainable(model: AffectForConditionalGeneration, groups: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """Freeze everything, then unfreeze the named groups; returns and logs counts per group.

    Raises:
        ValueError: For an unknown group, ``lora`` without an adapter, or ``llm`` on a 4-bit LLM.
    """
    unknown = sorted(set(groups) - set(TRAINABLE_GROUPS))
    if unknown:
        raise ValueError(f"unknown trainable groups {unknown}; known: {list(TRAINABLE_GROUPS)}")
    if "lora" in groups and not is_peft_wrapped(model):
        raise ValueError("trainable group 'lora' needs a LoRA adapter: set lora: in the config")
    if "llm" in groups and getattr(model.language_model, "is_loaded_in_4bit", False):
        raise ValueError("trainable group 'llm' is impossible on a 4-bit LLM: train 'lora' instead")
    parameters = group_parameters(model)
    counts = {}
    for group, params in parameters.items():
        for param in params:
            param.requires_grad_(group in groups)
        counts[group] = {
            "parameters": sum(p.numel() for p in params),
            "trainable": group in groups,
        }
        if params:
            logger.info("group %-10s %12d parameters  %s", group, counts[group]["parameters"],
                        "trainable" if group in groups else "frozen")
    return counts


def attention_name_problem(implementation: str) -> str | None:
    """Why transformers would refuse ``implementation`` as an attention implementation (None: it takes it).

    Checked when a config loads, so a misspelt name stops the run before featurization, not at the
    first stage. A kernels-hub repository (``org/name``) is left to transformers to fetch.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = sorted({"eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()})
    if implementation in known or implementation == "auto" or "/" in implementation:
        return None
    return f"expected auto, one of {known} or a kernels-hub repository (org/name)"


def resolve_training_attention(implementation: str | None, precision: str) -> str | None:
    """``auto``: the attention kernel that trains fastest for ``precision`` on this machine.

    On a CPU under bf16 or fp16 autocast the matmul form (``eager``): torch's CPU flash kernel runs
    its bf16 backward far below the machine's matmul rate. Everywhere else ``sdpa``: in float32 on a
    CPU the flash kernel trains faster than matmul attention and keeps no score matrices (the figures
    are in ``training/embedded.yaml``), and on a GPU it is the fused kernel. Other names pass through.
    """
    if implementation != "auto":
        return implementation
    import torch

    return "eager" if precision in ("bf16", "fp16") and not torch.cuda.is_available() else "sdpa"


def set_llm_attention(model: AffectForConditionalGeneration, implementation: str | None) -> str:
    """Switch the LLM's attention implementation in place (None: keep it); returns the one in use.

    Transformers looks the implementation up from the config at every forward, so the weights and
    any adapter stay as they are. Call it before :func:`compile_llm_layers`, whose graphs trace the
    attention function.
    """
    llm = model.language_model
    base = llm.get_base_model() if is_peft_wrapped(model) else llm
    if implementation is not None and implementation != base.config._attn_implementation:
        try:
            base.set_attn_implementation(implementation)
        except (ValueError, ImportError) as error:
            raise ValueError(f"train.attention={implementation!r}: {error}") from error
    return base.config._attn_implementation


def enable_gradient_checkpointing(model: AffectForConditionalGeneration, share: float = 1.0) -> int:
    """Checkpoint the LLM's layers; non-reentrant so frozen encoders and inputs without grad work.

    Args:
        model: The model whose LLM layers recompute their activations in the backward pass.
        share: Share of the layers that do, spread evenly through the stack (0 to 1); the others keep
            their activations, which costs memory and saves their second forward.

    Returns:
        How many layers are checkpointed.
    """
    llm = model.language_model
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # peft wrapper: forwards the older name to the base model
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.language_model.config.use_cache = False
    layers = llm.get_decoder().layers
    chosen = checkpointed_layers(len(layers), share)
    for index, layer in enumerate(layers):
        # transformers reads the flag per layer instance (GradientCheckpointingLayer), as the
        # compiled forward below does.
        layer.gradient_checkpointing = index in chosen
    return len(chosen)


def checkpointed_layers(num_layers: int, share: float) -> set[int]:
    """Indices of ``round(share * num_layers)`` layers spread evenly: 0.5 of 30 -> 0, 2, ..., 28."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share of checkpointed layers {share!r}; expected 0 to 1")
    count = round(share * num_layers)
    return {index * num_layers // count for index in range(count)}


def compile_llm_layers(model: AffectForConditionalGeneration) -> int:
    """Compile the LLM's decoder layers in place (dynamic shapes); returns how many.

    One compiled function of the layer class's own forward serves every layer (the weights are its
    inputs), where a whole-model graph takes minutes to compile for the same step time. Gradient
    checkpointing stays outside the compiled code: transformers checkpoints from inside a layer's
    forward, and dynamo cannot trace that checkpoint (the forward sets a context variable), so a
    compiled layer call fell back to eager under checkpointing and trained no faster. Here a layer
    checkpoints, when that is on, a call of the compiled forward, and the backward's recompute runs the
    same compiled code. Parameter names are unchanged, so checkpoints and optimizer state are those of
    the uncompiled model.
    """
    layers = model.language_model.get_decoder().layers
    for layer in layers:
        if "forward" not in vars(layer):
            layer.forward = types.MethodType(_compiled_layer_forward(type(layer)), layer)
    return len(layers)


@functools.cache
def _compiled_layer_forward(layer_class: type) -> Callable[..., Any]:
    """A forward for layers of ``layer_class``: its own forward compiled, checkpointed from outside."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    inner = layer_class.forward
    if issubclass(layer_class, GradientCheckpointingLayer):
        inner = inner.__wrapped__  # transformers' checkpointing wrapper around the class's own forward
    compiled = torch.compile(inner, dynamic=True)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "gradient_checkpointing", False) and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(functools.partial(compiled, self, **kwargs), *args)
        return compiled(self, *args, **kwargs)

    return forward


def compile_counts() -> dict[str, int]:
    """Graphs dynamo compiled in this process and the graph breaks it met: a compiled stage records
    them, since a break falls back to eager without an error."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def set_adapter_dropout(model: AffectForConditionalGeneration, active: bool) -> None:
    """LoRA dropout on (train mode) or off (eval mode): a stage that keeps the adapter frozen turns it
    off, since noise on an adapter that does not learn only perturbs the step, and drawing its masks
    (one per adapted layer and step, one random number at a time on a CPU) took a third of an align
    step of the embedded model: 3.0 against 2.0 s, the same losses (its adapter is still zero there)."""
    for name, module in model.language_model.named_modules():
        if name.endswith("lora_dropout"):
            module.train(active)


def llm_weight_summary(model: AffectForConditionalGeneration) -> dict[str, object]:
    """How the LLM's weights are held: linear layers by kind (4-bit or not) and parameter dtypes.

    Recorded in every stage's summary, so a run shows that a QLoRA curriculum kept its LLM in
    4-bit in every stage.
    """
    linear_4bit = linear = 0
    for name, module in model.language_model.named_modules():
        # A LoRA wrapper holds the original layer as base_layer; its A/B matrices are the adapter's.
        if "lora_" in name or hasattr(module, "base_layer"):
            continue
        if type(module).__name__ == "Linear4bit":
            linear_4bit += 1
        elif isinstance(module, nn.Linear):
            linear += 1
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for n, p in model.language_model.named_parameters()
                     if "lora_" not in n})
    return {"linear_4bit": linear_4bit, "linear": linear, "dtypes": dtypes}
