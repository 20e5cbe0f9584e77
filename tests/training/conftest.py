"""Shared fixtures: one tiny synthetic set and one feature cache per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from affect_llm.data.synth import generate_synthetic_set


@pytest.fixture(scope="session")
def synth_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-train / 8-val synthetic set (a few seconds to render)."""
    return generate_synthetic_set(
        tmp_path_factory.mktemp("synth"), seed=0, num_train=32, num_val=8, num_test_per_cue=4
    )


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache shared by every run: the tiny encoders are seeded, so features agree."""
    return tmp_path_factory.mktemp("feature_cache")
