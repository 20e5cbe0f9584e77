"""Dataset adapters: one module per published corpus layout, each turning it into a manifest.

Every adapter exposes ``build(root, **options) -> BuildResult`` with absolute media paths;
:func:`prepare` writes the manifest (paths relative to it) and a build summary that lists every
medium an annotation refers to but that is missing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from affect_llm.data.adapters.common import BuildResult, BuildSummary, drop_repeated_ids, write_prepared
from affect_llm.data.issues import RefusedInputError

# name -> (module, fixed keyword arguments); a constant, so it is not mutable registry state.
ADAPTERS: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
    "mer2023": ("affect_llm.data.adapters.mer", (("dataset", "mer2023"),)),
    "mer2024": ("affect_llm.data.adapters.mer", (("dataset", "mer2024"),)),
    "mercaption": ("affect_llm.data.adapters.mercaption", ()),
    "meld": ("affect_llm.data.adapters.meld", ()),
    "iemocap": ("affect_llm.data.adapters.iemocap", ()),
    "cremad": ("affect_llm.data.adapters.cremad", ()),
    "ravdess": ("affect_llm.data.adapters.ravdess", ()),
    "polish": ("affect_llm.data.adapters.polish", ()),
    "generic": ("affect_llm.data.adapters.generic", ()),
}


def adapter_names() -> list[str]:
    """Names accepted by :func:`build_dataset` and :func:`prepare`."""
    return sorted(ADAPTERS)


def build_dataset(name: str, root: str | Path, **options: Any) -> BuildResult:
    """Run one adapter.

    Raises:
        ValueError: On an unknown adapter name.
    """
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {adapter_names()}")
    module_name, fixed = ADAPTERS[name]
    module = importlib.import_module(module_name)
    return module.build(Path(root), **dict(fixed), **options)


def prepare(
    name: str, root: str | Path, out: str | Path, *, keep_missing: bool = False, strict: bool = False,
    **options: Any,
) -> BuildSummary:
    """Build a dataset's manifest at ``out`` and its summary at ``<out>.summary.json``.

    Args:
        name: Adapter name (see :func:`adapter_names`).
        root: The corpus folder, in its published layout.
        out: Manifest path.
        keep_missing: Keep rows whose media are missing (the data check will quarantine them).
        strict: Write nothing when an annotation was skipped or a medium is missing.
        **options: Adapter-specific options.

    Returns:
        The summary (rows, splits, label counts, missing media, skipped annotations).

    Raises:
        RefusedInputError: Under ``strict``, naming the first skipped annotation or missing medium.
    """
    result = build_dataset(name, root, **options)
    drop_repeated_ids(result)  # before the strict check: a repeated id is a skipped annotation too
    if strict and (result.skipped or result.missing):
        first = (f"{result.skipped[0]['where']}: {result.skipped[0]['reason']}" if result.skipped else
                 f"{result.missing[0].id}: {result.missing[0].field}: {result.missing[0].path}: file not found")
        raise RefusedInputError(first)
    return write_prepared(name, Path(root), result, Path(out), keep_missing=keep_missing)


__all__ = ["ADAPTERS", "BuildResult", "BuildSummary", "adapter_names", "build_dataset", "prepare"]
