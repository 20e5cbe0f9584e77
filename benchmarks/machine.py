"""Which cores a benchmark ran on, printed at its top.

Figures from different kinds of cores differ more than most changes do: on two machines that both
call themselves "AMD EPYC", the float32 matmul rate of two cores measured 75 and 180 GFLOP/s, so a
batched step's time (compute-bound) and a one-clip step's (bound by memory) moved by different
factors, and so did every ratio between them. The model name alone does not tell the generations
apart; the family and model numbers and the vector instructions do.
"""

from __future__ import annotations

from pathlib import Path

# The instructions that decide float32 and bfloat16 matmul speed on x86, in the order printed.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def amd_generation(family: int, model: int) -> str | None:
    """AMD's core generation from its family and model numbers, where the ranges are well known."""
    if family == 0x17:  # Zen and Zen+ execute 256-bit vector instructions as two 128-bit halves
        return "Zen/Zen+" if model < 0x30 else "Zen 2"
    if family == 0x19:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF else "Zen 3"
    if family == 0x1A:
        return "Zen 5"
    return None


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo``, plus ``cpus`` (how many processors are listed)."""
    fields: dict[str, str] = {}
    cpus = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            cpus += 1
        if key and key not in fields:
            fields[key] = value.strip()
    fields["cpus"] = str(cpus)
    return fields


def describe_cpu(cpuinfo: str | None = None) -> str:
    """One line: model name, generation (AMD), family/model, listed processors and vector instructions.

    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read when not given; off Linux the line says so).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "cpu: unknown (no /proc/cpuinfo)"
    fields = parse_cpuinfo(cpuinfo)
    name = fields.get("model name", "unknown")
    try:
        family, model = int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return f"cpu: {name}, {fields['cpus']} listed"
    generation = amd_generation(family, model) if fields.get("vendor_id") == "AuthenticAMD" else None
    flags = set(fields.get("flags", "").split())
    vector = " ".join(flag for flag in VECTOR_FLAGS if flag in flags) or "none of " + " ".join(VECTOR_FLAGS)
    kind = f" ({generation})" if generation else ""
    return f"cpu: {name}{kind}, family {family} model {model}, {fields['cpus']} listed; vector: {vector}"
