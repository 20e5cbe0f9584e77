"""Versioned prompt files.

Prompts live under ``prompts/<name>/<version>.yaml`` in the repository (or any root given).
A loaded prompt carries its id, version and a SHA-256 of the file bytes; ``ref`` is the string
written into every checkpoint and every output row, so a result can always be traced back to
the exact text that produced it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from affect_llm.paths import repo_root


@dataclass(frozen=True)
class PromptFile:
    """One versioned prompt file.

    Attributes:
        name: Prompt family, the folder name (e.g. ``tasks``, ``judge``).
        version: File stem (e.g. ``v1``).
        sha256: Hex digest of the file bytes.
        data: Parsed YAML mapping.
        path: Where it was read from.
    """

    name: str
    version: str
    sha256: str
    data: dict[str, Any] = field(repr=False)
    path: Path

    @property
    def ref(self) -> str:
        """Short identity ``name@version#hash12`` recorded beside outputs."""
        return f"{self.name}@{self.version}#{self.sha256[:12]}"

    def __getitem__(self, key: str) -> Any:
        if key not in self.data:
            raise KeyError(f"prompt {self.ref} ({self.path}) has no field {key!r}; fields: {sorted(self.data)}")
        return self.data[key]


def prompts_root() -> Path:
    return repo_root() / "prompts"


def available_versions(name: str, root: Path | None = None) -> list[str]:
    folder = (root or prompts_root()) / name
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_prompt(name: str, version: str | None = None, root: Path | None = None) -> PromptFile:
    """Load ``prompts/<name>/<version>.yaml``; the highest version when ``version`` is None.

    Raises:
        FileNotFoundError: The family or version does not exist (the message lists what does).
        ValueError: The file is not a YAML mapping.
    """
    folder = (root or prompts_root()) / name
    versions = available_versions(name, root)
    if not versions:
        raise FileNotFoundError(f"no prompt files under {folder}")
    version = version or max(versions, key=_version_key)
    path = folder / f"{version}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"prompt {name}@{version} not found at {path}; available: {versions}")
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    if not isinstance(data, dict):
        raise ValueError(f"prompt file {path} must hold a YAML mapping, got {type(data).__name__}")
    return PromptFile(name=name, version=version, sha256=hashlib.sha256(raw).hexdigest(), data=data, path=path)


def _version_key(version: str) -> tuple[int, str]:
    digits = "".join(ch for ch in version if ch.isdigit())
    return (int(digits) if digits else -1, version)
