"""Checks of single values read from a training config's YAML, each naming where the value sits.

YAML's own typing is loose where a config must not be: ``1e-5`` without a dot reads as a string,
a quoted ``"false"`` is a non-empty string, and ``true`` is an integer to Python.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any


def number(value: Any, where: str) -> float:
    """YAML reads ``1e-5`` (no dot) as a string: accept numeric strings, refuse anything else (NaN and
    infinities included)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: expected a number, got {value!r}") from error
    if not math.isfinite(result):  # every comparison with NaN is false: it would pass each range check
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return result


def check_flag(value: Any, where: str) -> None:
    """A YAML true or false; a quoted "false" is a non-empty string, which would read as on."""
    if not isinstance(value, bool):
        raise ValueError(f"{where}={value!r}; expected true or false")


def checkpointed_share(value: Any, where: str) -> float:
    """``gradient_checkpointing``: true (every LLM layer), false (none) or the share of the layers
    (0 to 1) that recompute their activations in the backward pass."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and 0.0 <= value <= 1.0:
        return float(value)
    raise ValueError(f"{where}={value!r}; expected true, false or a share of the LLM's layers from 0 to 1")


def check_whole(value: Any, where: str) -> None:
    """A YAML integer (``true`` is one to Python, and is refused)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}={value!r}; expected a whole number")


def build_section(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """``cls`` built from a YAML mapping, its unknown keys refused by name."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**data)
