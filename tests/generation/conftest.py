"""Shared fixtures of the generation tests: a small synthetic set and a tiny random checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from genhelpers import TINY_SPEC, read_rows, write_rows

from affect_llm.loading.build import build_model
from affect_llm.loading.checkpoint import save_checkpoint


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from affect_llm.data.synth import generate_synthetic_set

    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_set(out, seed=0, num_train=8, num_val=2, num_test_per_cue=2)
    return out


@pytest.fixture(scope="session")
def synth_rows(synth_dir: Path) -> list[dict]:
    """Every synthetic row with absolute media paths, so subsets can live in any folder."""
    rows = read_rows(synth_dir / "manifest.jsonl")
    for row in rows:
        for field in ("video", "audio", "image"):
            if row.get(field):
                row[field] = str(synth_dir / row[field])
    return rows


@pytest.fixture(scope="session")
def small_manifest(synth_rows: list[dict], tmp_path_factory) -> Path:
    """Six clips: enough for batches, shards and resumption, small enough to stay fast."""
    return write_rows(synth_rows[:6], tmp_path_factory.mktemp("manifest") / "small.jsonl")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    model, processor = build_model(TINY_SPEC, seed=0)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("ckpt") / "tiny")
