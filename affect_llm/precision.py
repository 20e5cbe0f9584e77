"""Precision and quantization of a loaded model: decided once, recorded, followed by every load.

One rule says which setting wins:

1. ``dtype`` is the weight dtype of the LLM. With ``quantization: 4bit`` the LLM's linear layers are
   NF4 (bitsandbytes, double quantization) and ``dtype`` is their compute dtype; embeddings, norms
   and the head stay in ``dtype``.
2. ``encoder_dtype`` is the weight dtype of the media encoders; unset, they follow ``dtype``.
3. Projectors and LoRA adapters always keep float32 weights: they are what trains, and float32
   master weights are what makes bf16 / fp16 training stable. At inference they cast their
   outputs to the LLM's dtype at the merge.
4. The training ``precision`` (``no`` / ``bf16`` / ``fp16``) is accelerate's autocast: it sets the
   dtype of the forward computation, never the stored weights. ``auto`` is bf16 where the hardware
   multiplies bf16 natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX) and
   ``no`` elsewhere, where bf16 matmuls are emulated and slower than float32.

A checkpoint records its precision (``config.json``, key ``precision``) and every later load
(the next curriculum stage, ``explain``, ``chat``, the pipeline, the server) follows it unless the
caller overrides it (``--dtype``, ``--load-in-4bit``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

DtypeName = Literal["float32", "bfloat16", "float16"]
QuantizationName = Literal["none", "4bit"]
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
QUANTIZATION_NAMES: tuple[str, ...] = ("none", "4bit")


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {name!r}: expected one of {DTYPE_NAMES}")
    return getattr(torch, name)


def native_bf16() -> bool:
    """Whether this machine's training device multiplies bf16 natively (faster than float32).

    On a CPU the flags decide: without AVX512-BF16 or AMX, oneDNN emulates bf16 and an autocast
    step runs slower than in float32 (2.7x on an AVX-512 CPU without them).
    """
    import torch

    if torch.cuda.is_available():
        # Without the flag torch also says yes where bf16 is emulated (V100, T4).
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to know, and emulated bf16 is the costly mistake
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_training_precision(requested: str) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``no``; other values unchanged."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16() else "no"


@dataclass(frozen=True)
class Precision:
    """How the model's weights are held in memory.

    Attributes:
        dtype: Weight dtype of the LLM (compute dtype of its 4-bit layers).
        quantization: ``none`` or ``4bit`` (QLoRA: the LLM's linear layers in NF4).
        encoder_dtype: Weight dtype of the media encoders; None follows ``dtype``.
    """

    dtype: DtypeName = "float32"
    quantization: QuantizationName = "none"
    encoder_dtype: DtypeName | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {DTYPE_NAMES}")
        if self.quantization not in QUANTIZATION_NAMES:
            raise ValueError(f"quantization={self.quantization!r}: expected one of {QUANTIZATION_NAMES}")
        if self.encoder_dtype is not None and self.encoder_dtype not in DTYPE_NAMES:
            raise ValueError(f"encoder_dtype={self.encoder_dtype!r}: expected one of {DTYPE_NAMES} or null")

    @property
    def is_4bit(self) -> bool:
        return self.quantization == "4bit"

    @property
    def resolved_encoder_dtype(self) -> str:
        return self.encoder_dtype or self.dtype

    def llm_torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    def encoder_torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.resolved_encoder_dtype)

    def bitsandbytes_config(self) -> Any:
        """The ``BitsAndBytesConfig`` of the LLM, or None when it is not quantized."""
        if not self.is_4bit:
            return None
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=self.llm_torch_dtype(),
        )

    def overridden(self, dtype: str | None = None, load_in_4bit: bool | None = None) -> Precision:
        """This precision with the caller's overrides (None keeps the recorded value)."""
        changes: dict[str, Any] = {}
        if dtype is not None:
            changes["dtype"] = dtype
        if load_in_4bit is not None:
            changes["quantization"] = "4bit" if load_in_4bit else "none"
        return replace(self, **changes)

    def describe(self, training_precision: str | None = None) -> str:
        """One line with the resolved rule, e.g. for ``train --check``."""
        llm = f"NF4 4-bit (compute {self.dtype})" if self.is_4bit else self.dtype
        text = (f"LLM weights {llm}; encoders {self.resolved_encoder_dtype}; "
                "projectors and LoRA float32")
        if training_precision is not None:
            compute = "weights' dtype" if training_precision == "no" else training_precision
            text += f"; training forward in {compute} (autocast {training_precision})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Precision:
        """Read a recorded precision; None (a checkpoint that records none) is float32, unquantized."""
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"precision: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)
