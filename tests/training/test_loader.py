"""The training loaders: each rank's share of the seeded schedule, resumable at a step; validation
batches equal in number on every rank; runs without a feature cache and stages that train encoders."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
from trainhelpers import read_losses, tiny_config

from affect_llm.data.manifest import ManifestRow
from affect_llm.training.config import StageConfig, TrainConfig
from affect_llm.training.recipe import CurriculumRecipe
from affect_llm.training.sampler import ScheduleSampler, validation_batches
from affect_llm.training.schedule import Sample, iter_schedule

TASKS = {"evidence", "perceive", "reason"}


def _schedule():
    stage = StageConfig(name="s", datasets={"a": 1.0}, tasks={"perceive": 1.0}, trainable=["projectors"], steps=4)
    rows = {"a": [ManifestRow(id=f"r{i}") for i in range(10)]}
    return lambda: iter_schedule(stage, rows, lambda row, task: True, global_batch=4, seed=7)


def test_two_ranks_take_turns_over_one_ranks_batches() -> None:
    single = list(ScheduleSampler(_schedule(), 0, 6))
    ranks = [list(ScheduleSampler(_schedule(), 0, 6, rank=r, world=2)) for r in (0, 1)]
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch[0::2] + batch[1::2]
        assert len(ranks[0][step]) == len(ranks[1][step]) == 2


def test_a_resumed_sampler_continues_where_the_schedule_was() -> None:
    whole = list(ScheduleSampler(_schedule(), 0, 8))
    assert list(ScheduleSampler(_schedule(), 5, 8)) == whole[5:]
    assert len(ScheduleSampler(_schedule(), 5, 8)) == 3
    assert list(islice(_schedule()(), 8)) == whole  # the same draws every time


def test_validation_batches_are_equal_in_number_and_padding_is_not_counted() -> None:
    samples = [Sample("a", i, "perceive") for i in range(7)]
    ranks = [validation_batches(samples, batch_size=2, rank=r, world=2) for r in (0, 1)]
    assert [len(b) for b in ranks[0]] == [2, 2] and [len(b) for b in ranks[1]] == [2, 2]
    counted = [s for r in ranks for b in r for s in b if s.counted]
    assert sorted(s.index for s in counted) == list(range(7))
    assert sum(not s.counted for r in ranks for b in r for s in b) == 1


@pytest.fixture(scope="module")
def cached_run(synth_manifest: Path, feature_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cached") / "run"
    CurriculumRecipe(TrainConfig.from_dict(tiny_config(synth_manifest, run_dir, feature_cache, stages=1), TASKS)).run()
    return run_dir


def test_a_run_without_a_cache_encodes_in_the_step(cached_run: Path, synth_manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", None, stages=1)
    final = CurriculumRecipe(TrainConfig.from_dict(raw, TASKS)).run()
    assert (final / "config.json").is_file() and not list(tmp_path.rglob("*.data"))  # no shard written
    # Cached features are rounded to 16 bits, features computed in the step are not: losses agree closely.
    uncached, cached = read_losses(tmp_path / "run"), read_losses(cached_run)
    assert sorted(uncached) == sorted(cached)
    for step, loss in cached.items():
        assert uncached[step] == pytest.approx(loss, rel=1e-2), f"step {step}"


def test_a_stage_that_trains_the_encoders_decodes_in_the_loader(
    synth_manifest: Path, feature_cache: Path, tmp_path: Path
) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", feature_cache, stages=2)
    raw["stages"][1]["trainable"] = ["projectors", "encoders"]
    raw["data"]["decode_workers"] = 2
    CurriculumRecipe(TrainConfig.from_dict(raw, TASKS)).run()
    losses = read_losses(tmp_path / "run", "reason")
    assert sorted(losses) == [1, 2] and all(loss > 0 for loss in losses.values())
    assert (tmp_path / "run" / "stages" / "reason" / "best" / "model.safetensors").is_file()


def test_a_damaged_cache_entry_is_encoded_again_before_training(
    cached_run: Path, synth_manifest: Path, feature_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes flipped inside the first entry of a shard (a damaged disk): the calibration that reads the
    training rows' entries finds it, the clip is encoded again, and the run trains as before."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(feature_cache, cache)
    shard = sorted(cache.rglob("*.data"))[0]
    data = bytearray(shard.read_bytes())
    for offset in range(200, 1200, 97):
        data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    raw = tiny_config(synth_manifest, tmp_path / "run", cache, stages=1)
    with caplog.at_level("WARNING", logger="affect_llm.training.media_source"):
        final = CurriculumRecipe(TrainConfig.from_dict(raw, TASKS)).run()
    assert (final / "config.json").is_file()
    assert "1 feature cache entries failed their checksum" in caplog.text
    assert read_losses(tmp_path / "run") == pytest.approx(read_losses(cached_run), rel=1e-2)
