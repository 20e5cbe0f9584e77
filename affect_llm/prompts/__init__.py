"""Versioned prompt files, shipped inside the package.

Prompts live under ``affect_llm/prompts/<name>/<version>.yaml`` (or any root given). A loaded
prompt carries its id, version and a SHA-256 of the file bytes; ``ref`` is the string written into
every checkpoint and every output row, so a result can always be traced back to the exact text
that produced it. A checkpoint carries its task prompt's text (:func:`prompt_from_text`), so it
answers with the words it was trained on wherever it travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affect_llm.fileio import parse_yaml
from affect_llm.hashing import bytes_sha256

ANSWER_KEYS: tuple[str, ...] = ("labels", "explanation", "evidence")


@dataclass(frozen=True)
class PromptFile:
    """One versioned prompt file.

    Attributes:
        name: Prompt family, the folder name (e.g. ``tasks``, ``judge``).
        version: File stem (e.g. ``v1``).
        sha256: Hex digest of the file bytes.
        data: Parsed YAML mapping.
        path: Where it was read from.
        text: The file's text, as hashed.
    """

    name: str
    version: str
    sha256: str
    data: dict[str, Any] = field(repr=False)
    path: Path
    text: str = field(repr=False, default="")

    @property
    def ref(self) -> str:
        """Short identity ``name@version#hash12`` recorded beside outputs."""
        return f"{self.name}@{self.version}#{self.sha256[:12]}"

    def task_keys(self, task: str) -> tuple[str, ...]:
        """The answer keys (``labels``, ``explanation``, ``evidence``) task ``task`` asks for.

        Raises:
            ValueError: If the prompt has no such task or the task names an unknown key.
        """
        tasks = self["tasks"]
        if task not in tasks:
            raise ValueError(f"unknown task {task!r} in prompt {self.ref}; tasks: {sorted(tasks)}")
        keys = tuple(tasks[task].get("keys", ()))
        unknown = sorted(set(keys) - set(ANSWER_KEYS))
        if unknown or not keys:
            raise ValueError(f"prompt {self.ref}: task {task!r} keys {list(keys)}: expected some of {ANSWER_KEYS}")
        return keys

    def __getitem__(self, key: str) -> Any:
        if key not in self.data:
            raise KeyError(f"prompt {self.ref} ({self.path}) has no field {key!r}; fields: {sorted(self.data)}")
        return self.data[key]


def prompts_root() -> Path:
    """The folder of the prompt files shipped with the package."""
    return Path(__file__).resolve().parent


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
    return _parse(name, version, path.read_bytes(), path)


def prompt_from_text(name: str, version: str, text: str, sha256: str, where: str) -> PromptFile:
    """A prompt carried as text (inside a checkpoint), checked against its recorded hash.

    Raises:
        ValueError: If the text does not hash to ``sha256`` (the prompt was edited after saving).
    """
    raw = text.encode("utf-8")
    if bytes_sha256(raw) != sha256:
        raise ValueError(f"{where}: prompt {name}@{version} text does not match its recorded sha256 {sha256[:12]}")
    return _parse(name, version, raw, Path(where))


def _parse(name: str, version: str, raw: bytes, path: Path) -> PromptFile:
    data = parse_yaml(raw, f"prompt file {path}")
    if not isinstance(data, dict):
        raise ValueError(f"prompt file {path} must hold a YAML mapping, got {type(data).__name__}")
    return PromptFile(name=name, version=version, sha256=bytes_sha256(raw), data=data, path=path,
                      text=raw.decode("utf-8"))


def _version_key(version: str) -> tuple[int, str]:
    digits = "".join(ch for ch in version if ch.isdigit())
    return (int(digits) if digits else -1, version)
