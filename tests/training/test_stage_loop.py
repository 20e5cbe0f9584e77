"""Best-checkpoint selection shared by every stage kind: lower loss, higher reward."""

from __future__ import annotations

import json
import shutil

from affect_llm.loading.checkpoint import META_FILE
from affect_llm.training.grpo_stage import VAL_REWARD
from affect_llm.training.stage_loop import BestRule

LOSS = BestRule("val_loss")
REWARD = BestRule("val_reward", higher_is_better=True)


def test_a_loss_keeps_the_lowest_and_a_reward_the_highest() -> None:
    assert LOSS.improves({"val_loss": None, "step": None}, 2.0, 10)
    assert LOSS.improves({"val_loss": 2.0, "step": 10}, 1.5, 20)
    assert not LOSS.improves({"val_loss": 1.5, "step": 20}, 1.7, 30)
    assert REWARD.improves({"val_reward": 0.4, "step": 10}, 0.6, 20)
    assert not REWARD.improves({"val_reward": 0.6, "step": 20}, 0.5, 30)
    assert not REWARD.improves({"val_reward": 0.6, "step": 20}, None, 30)


def test_a_reinforcement_stage_keeps_the_later_of_equal_rewards_and_a_loss_the_earlier() -> None:
    # Every validation answer right from the first validation on: the stage's later steps still count.
    assert VAL_REWARD.improves({"val_reward": 1.0, "step": 10}, 1.0, 20)
    assert not VAL_REWARD.improves({"val_reward": 1.0, "step": 20}, 1.0, 10)  # never back to an earlier step
    assert not VAL_REWARD.improves({"val_reward": 1.0, "step": 20}, 0.9, 30)
    assert not REWARD.improves({"val_reward": 1.0, "step": 10}, 1.0, 20)
    assert not LOSS.improves({"val_loss": 1.5, "step": 10}, 1.5, 20)


def test_without_a_validation_figure_the_latest_step_is_kept_never_an_earlier_one() -> None:
    assert LOSS.improves({"val_loss": None, "step": 10}, None, 20)
    assert not LOSS.improves({"val_loss": None, "step": 20}, None, 10)


def test_a_resumed_stage_starts_from_the_checkpoint_it_kept(tmp_path) -> None:
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / META_FILE).write_text(json.dumps({"val_reward": 0.7, "step": 30}))
    assert REWARD.start(tmp_path, resume=True) == {"val_reward": 0.7, "step": 30}
    assert REWARD.start(tmp_path, resume=False) == {"val_reward": None, "step": None}


def test_a_diverged_validation_never_pins_the_best_checkpoint() -> None:
    nan = float("nan")
    assert LOSS.improves({"val_loss": None, "step": None}, nan, 10)  # nothing else yet
    assert not LOSS.improves({"val_loss": 3.0, "step": 10}, nan, 20)
    assert not LOSS.improves({"val_loss": 3.0, "step": 10}, float("inf"), 20)
    assert LOSS.improves({"val_loss": nan, "step": 10}, 3.0, 20)  # any finite figure replaces it
    assert REWARD.improves({"val_reward": nan, "step": 10}, 0.1, 20)


def test_a_state_swap_cut_between_its_renames_is_completed(tmp_path) -> None:
    """Killed after ``state -> state.old`` and before ``state.tmp -> state``: the newer state is put back."""
    from affect_llm.training.state import PROGRESS_FILE, saved_step

    for name, step in (("state.old", 4), ("state.tmp", 8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / PROGRESS_FILE).write_text(json.dumps({"step": step}))
    assert saved_step(tmp_path / "state") == 8
    assert not (tmp_path / "state.tmp").exists()
    shutil.rmtree(tmp_path / "state")
    assert saved_step(tmp_path / "state") == 4  # the older one, when the newer never finished
    assert saved_step(tmp_path / "nothing") is None
