"""Where affect-llm keeps converted models and caches on disk.

Every location is derived from environment variables at call time, never stored in module
state, so tests and users can redirect them per process.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root of all on-disk state: ``$AFFECT_LLM_HOME`` or ``~/.cache/affect-llm``."""
    env = os.environ.get("AFFECT_LLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "affect-llm"


def models_dir() -> Path:
    """Converted embedded models: ``$AFFECT_LLM_MODELS`` or ``<cache_root>/models``."""
    env = os.environ.get("AFFECT_LLM_MODELS")
    return Path(env).expanduser() if env else cache_root() / "models"


def features_dir() -> Path:
    """Default feature cache: ``$AFFECT_LLM_FEATURES`` or ``<cache_root>/features``."""
    env = os.environ.get("AFFECT_LLM_FEATURES")
    return Path(env).expanduser() if env else cache_root() / "features"


def repo_root() -> Path:
    """The source checkout (holds ``prompts/``, ``training/``, ``eval/``)."""
    return Path(__file__).resolve().parent.parent
