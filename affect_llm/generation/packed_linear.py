"""The LLM's linear layers with their weights laid out once for oneDNN, for generation on a CPU.

``nn.Linear`` on a CPU multiplies float32 through MKL. On the AMD EPYC cores this project is
measured on, MKL reads a one-row layer's weights at about a fifth of the memory's speed (the
embedded LLM's 49152 x 576 output matrix: 11.1 ms a token against 2.2 ms to sum the same bytes) and
multiplies 32 rows at about half the rate oneDNN reaches on weights it reordered ahead of time
(``torch.ops.mkldnn._reorder_linear_weight``, the layout inductor gives frozen weights).
:func:`pack_linear_layers` swaps every plain ``nn.Linear`` of the LLM for a :class:`PackedLinear`
holding that layout; :func:`unpack_linear_layers` swaps them back, bit for bit (``to_dense``), for
training. The packed matmul is the custom op ``affect_llm::packed_linear``, which ``torch.compile``
calls as it stands (inductor's own lowering of oneDNN's op asserts on weights it did not freeze
itself). Compiled decoding on a CPU no longer uses it: it freezes the plain layers and lays them out
itself (:mod:`affect_llm.generation.compiled_step`), so packing serves the eager decoding loop.

Whether packing pays depends on the cores and on how many rows a step multiplies: on the Intel
Xeon without AMX this project was also measured on, MKL multiplies one row faster than oneDNN (whose
call costs about 20 us more; one row through the embedded LLM's linear layers 13.9 ms plain against
26.3 ms packed in one measurement) while oneDNN is ahead from about 8 to 16 rows on. :func:`measure_packing` times both layouts on the
LLM's own layer shapes, at the rows the caller will decode, so the hf backend packs only where it is
faster there.

Packing is for inference only (no autograd through the op) and for float32 weights on a CPU;
a LoRA adapter must be merged first (peft's layers read their base layer's weight).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def _packed_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` in oneDNN's reordered layout."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [None], "")


# Registered once, at import: an op is process-wide. A plain kernel for every backend costs 13 us a call
# against 18 us through torch.library.custom_op's wrapper (12 us for oneDNN's op called directly; a
# one-row 64 x 64 product on the Zen 5 cores), and a decoding step makes 211 such calls.
_LIBRARY = torch.library.Library("affect_llm", "DEF")
_LIBRARY.define("packed_linear(Tensor x, Tensor packed_weight, Tensor? bias) -> Tensor")
_LIBRARY.impl("packed_linear", _packed_linear, "CompositeExplicitAutograd")


@torch.library.register_fake("affect_llm::packed_linear")
def _packed_linear_shape(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], packed_weight.shape[0]))  # (..., out_features)


def packing_available() -> bool:
    """Whether this torch has oneDNN and the packed linear op (CPU builds normally do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``nn.Linear`` whose weight is kept in oneDNN's reordered layout (inference only).

    Args:
        linear: The layer to replace; its weight is reordered, not copied, when nothing else holds it.
        shared_weight: Keep a reference to the original weight (it is tied to another module, such as
            the input embeddings an output matrix shares): unpacking then restores the tie.
    """

    def __init__(self, linear: nn.Linear, shared_weight: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, None), persistent=False)
        self.bias = linear.bias
        # Kept only where another module holds it anyway: no memory is added.
        self.shared_weight = linear.weight if shared_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` -> ``(..., out_features)``, as ``nn.Linear`` computes it."""
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference: unpack_linear_layers() before training")
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.affect_llm.packed_linear(x, self.packed_weight, bias)

    def unpacked(self) -> nn.Linear:
        """The plain layer again, with the same weights to the bit."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        if self.shared_weight is not None:
            linear.weight = self.shared_weight
        else:
            linear.weight = nn.Parameter(self.packed_weight.to_dense(), requires_grad=False)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _packable(module: nn.Module) -> bool:
    # type(), not isinstance: subclasses (quantized, adapter layers) compute something else.
    return type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32


@dataclass(frozen=True)
class PackingProbe:
    """Both layouts timed on one module's linear layers (:func:`measure_packing`).

    Attributes:
        rows: Rows multiplied per call.
        plain_ms / packed_ms: One pass over every layer (each shape timed once, counted per layer),
            through ``nn.Linear``'s matmul and through the packed op; medians over the rounds.
        margin: How much faster packed must be to pay (its reorder and a second code path).
    """

    rows: int
    plain_ms: float
    packed_ms: float
    margin: float = 0.05

    @property
    def pays(self) -> bool:
        return self.packed_ms < (1 - self.margin) * self.plain_ms

    def describe(self) -> str:
        return (f"{self.rows} row(s) through the linear layers: {self.packed_ms:.1f} ms packed for oneDNN against "
                f"{self.plain_ms:.1f} ms plain, measured now: {'packed' if self.pays else 'plain'}")


def _seconds_per_call(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def measure_packing(module: nn.Module, rows: int = 1, rounds: int = 7) -> PackingProbe | None:
    """Time ``rows`` rows through ``module``'s packable linear layers, plain and packed, on these cores.

    One layer of each weight shape is timed (a few calls per round, the two layouts in turn) and
    counted once per layer of that shape: about 0.3 s for the embedded LLM at one row, 0.8 s at 32.

    Returns:
        The two times, or None where nothing could be packed (no oneDNN, no float32 CPU layer).
    """
    if not packing_available():
        return None
    shapes: dict[tuple[int, ...], tuple[nn.Linear, int]] = {}
    for child in module.modules():
        if _packable(child):
            layer, count = shapes.get(tuple(child.weight.shape), (child, 0))
            shapes[tuple(child.weight.shape)] = (layer, count + 1)
    if not shapes:
        return None
    plain_s = packed_s = 0.0
    for layer, count in shapes.values():
        weight = layer.weight.detach()
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        x = torch.randn(rows, weight.shape[1])
        # A few milliseconds a round for the embedded LLM's small layers; a tiny test model's stay at 50 calls.
        calls = min(50, max(3, math.ceil(4e6 / weight.numel())))

        def plain_call(x: torch.Tensor = x, weight: torch.Tensor = weight) -> torch.Tensor:
            return F.linear(x, weight)

        def packed_call(x: torch.Tensor = x, packed: torch.Tensor = packed) -> torch.Tensor:
            return torch.ops.affect_llm.packed_linear(x, packed, None)

        plain_call(), packed_call()  # first calls choose their kernels
        plain_times, packed_times = [], []
        for _ in range(rounds):  # in turn: the cores' speed drifts
            plain_times.append(_seconds_per_call(plain_call, calls))
            packed_times.append(_seconds_per_call(packed_call, calls))
        plain_s += count * statistics.median(plain_times)
        packed_s += count * statistics.median(packed_times)
    return PackingProbe(rows, 1000 * plain_s, 1000 * packed_s)


def pack_linear_layers(module: nn.Module) -> int:
    """Replace every float32 ``nn.Linear`` on the CPU under ``module`` by a :class:`PackedLinear`.

    Returns:
        How many layers were packed (0 where oneDNN is missing).
    """
    if not packing_available():
        return 0
    counts: dict[int, int] = {}
    for _, param in module.named_parameters(remove_duplicate=False):
        counts[id(param)] = counts.get(id(param), 0) + 1
    packed = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _packable(child):
                setattr(parent, name, PackedLinear(child, shared_weight=counts.get(id(child.weight), 0) > 1))
                packed += 1
    if packed:
        _own_remaining_weights(module)
    return packed


def _own_remaining_weights(module: nn.Module) -> None:
    """Copy the weights left unpacked (embeddings, norms) into this process's own memory.

    A checkpoint read zero-copy from its safetensors file keeps the whole file mapped while any
    tensor still views it, and every page of it that was read stays resident: after packing, the
    embedded LLM's replaced layers kept 513 MiB of file pages resident beside their packed copies.
    With the rest copied, the mapping is released (measured: 1,628 -> 1,115 MiB resident).
    """
    with torch.no_grad():
        for param in module.parameters():  # tied parameters once; the tie is the Parameter object, kept
            if param.dtype.is_floating_point:  # quantized storage (bitsandbytes) is left as loaded
                param.data = param.data.clone()


def packed_linear_layers(module: nn.Module) -> int:
    """How many of ``module``'s linear layers are packed (:func:`pack_linear_layers`)."""
    return sum(isinstance(child, PackedLinear) for child in module.modules())


def unpack_linear_layers(module: nn.Module) -> int:
    """Undo :func:`pack_linear_layers` under ``module``; returns how many layers were restored."""
    restored = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                setattr(parent, name, child.unpacked())
                restored += 1
    return restored
