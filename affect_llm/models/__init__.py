"""Embedded default models: registry, one-time conversion into transformers folders, resolution.

Converters import heavy packages (transformers, h5py, gguf) only when called.
"""

from affect_llm.models.registry import (
    EMBEDDED_MODELS,
    HUB_MODELS,
    EmbeddedModel,
    ModelNotPreparedError,
    embedded_models,
    get_embedded_model,
    resolve_model_path,
)

__all__ = [
    "EMBEDDED_MODELS",
    "HUB_MODELS",
    "EmbeddedModel",
    "ModelNotPreparedError",
    "embedded_models",
    "get_embedded_model",
    "resolve_model_path",
]
