"""Kill and resume: a stage interrupted after a checkpoint reaches the same losses as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainhelpers import read_losses, tiny_config

from affect_llm.training.config import TrainConfig
from affect_llm.training.recipe import CurriculumRecipe, _Interrupted

NUM_STEPS = 4


def _config(manifest: Path, run_dir: Path, cache: Path) -> TrainConfig:
    raw = tiny_config(manifest, run_dir, cache, stages=1, checkpoint_every=2, batch_size=2)
    # LoRA and projectors both train, so the optimizer state of both must come back on resume.
    raw["stages"][0].update(trainable=["projectors", "lora"], steps=NUM_STEPS, warmup_steps=1)
    return TrainConfig.from_dict(raw, {"evidence", "perceive", "reason"})


@pytest.fixture(scope="module")
def uninterrupted(
    synth_manifest: Path, feature_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    run_dir = tmp_path_factory.mktemp("resume") / "straight"
    CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache)).run()
    return run_dir


def test_resumed_losses_equal_uninterrupted(
    uninterrupted: Path, synth_manifest: Path, feature_cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "killed"
    recipe = CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache))
    recipe.stop_after_steps = 3  # the last state checkpoint is at step 2: step 3 is lost and redone
    with pytest.raises(_Interrupted):
        recipe.run()
    stage_dir = run_dir / "stages" / "align"
    assert json.loads((stage_dir / "state" / "progress.json").read_text()) == {"step": 2}
    assert not (stage_dir / "stage_done.json").exists()

    CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache), resume=True).run()
    expected = read_losses(uninterrupted)
    resumed = read_losses(run_dir)  # steps 3.. come from the resumed process
    assert sorted(resumed) == list(range(1, NUM_STEPS + 1))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5), f"step {step}"
    # Losses must move, or equality would prove nothing about the restored optimizer.
    assert len({round(v, 6) for v in expected.values()}) > 2
