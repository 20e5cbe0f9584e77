"""A whole two-stage run on tiny models: what it writes, rerun skipping, and the strict stage handoff."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from trainhelpers import read_losses, tiny_config

from affect_llm.hashing import file_sha256
from affect_llm.loading.checkpoint import (
    CheckpointError,
    checkpoint_fingerprint,
    load_checkpoint,
    read_metadata,
)
from affect_llm.training.config import TrainConfig
from affect_llm.training.inputs import StaleStageError, changed_keys, stage_inputs
from affect_llm.training.logging import RunLogger
from affect_llm.training.recipe import CurriculumRecipe

TASKS = {"evidence", "perceive", "reason"}


def _config(manifest: Path, run_dir: Path, cache: Path) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config(manifest, run_dir, cache, stages=2), TASKS)


@pytest.fixture(scope="module")
def finished_run(synth_manifest: Path, feature_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    final = CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache)).run()
    assert final == run_dir / "final"
    return run_dir


@pytest.fixture
def copied_run(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that a test may break."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir


def test_run_info_records_what_determines_the_run(finished_run: Path, synth_manifest: Path) -> None:
    info = json.loads((finished_run / "run_info.json").read_text())
    assert info["config"]["stages"][1]["name"] == "reason"
    assert info["prompt"]  # id and hash of the prompt file the run used
    assert info["manifests"] == {"synth": file_sha256(synth_manifest)}
    assert info["libraries"]["torch"] is not None and info["libraries"]["transformers"] is not None
    assert "git_commit" in info and info["world_size"] == 1


def test_log_has_every_step_of_every_stage(finished_run: Path) -> None:
    assert sorted(read_losses(finished_run, "align")) == [1, 2, 3, 4]
    assert sorted(read_losses(finished_run, "reason")) == [1, 2]
    assert all(loss > 0 for loss in read_losses(finished_run).values())


def test_every_step_and_stage_records_the_peak_memory_so_far(finished_run: Path) -> None:
    records = [json.loads(line) for line in (finished_run / "log.jsonl").read_text().splitlines()]
    peaks = [r["peak_resident_mib"] for r in records if "peak_resident_mib" in r]
    assert len(peaks) == 6 and peaks[0] > 50  # the process holds torch and a model: tens of MiB at least
    assert peaks == sorted(peaks)  # a high-water mark never falls within the process
    done = json.loads((finished_run / "stages" / "reason" / "stage_done.json").read_text())
    assert done["peak_resident_mib"] >= peaks[-1]


def test_tensorboard_events_are_written(finished_run: Path) -> None:
    events = list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_each_stage_keeps_its_best_checkpoint(finished_run: Path) -> None:
    for stage in ("align", "reason"):
        meta = read_metadata(finished_run / "stages" / stage / "best")
        assert meta["stage"] == stage and meta["val_loss"] is not None
        best = finished_run / "stages" / stage / "best"
        assert (best / "model.safetensors").is_file() and (best / "adapter").is_dir()
        done = json.loads((finished_run / "stages" / stage / "stage_done.json").read_text())
        assert done["best_step"] == meta["step"]
        assert not (finished_run / "stages" / stage / "state").exists()  # resumable state removed when done


def test_final_is_the_last_stage_and_loads(finished_run: Path) -> None:
    assert read_metadata(finished_run / "final")["stage"] == "reason"
    model, processor = load_checkpoint(finished_run / "final")
    assert set(model.projectors) == {"audio", "face"}
    result = json.loads((finished_run / "result.json").read_text())
    assert Path(result["final_checkpoint"]) == finished_run / "final"
    assert [s["stage"] for s in result["stages"]] == ["align", "reason"]


def test_rerun_skips_finished_stages(
    finished_run: Path, synth_manifest: Path, feature_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(CurriculumRecipe, "train_stage", refuse)
    monkeypatch.setattr(CurriculumRecipe, "setup_model", refuse)
    lines_before = (finished_run / "log.jsonl").read_text()
    final = CurriculumRecipe(_config(synth_manifest, finished_run, feature_cache)).run()
    assert read_metadata(final)["stage"] == "reason"
    assert (finished_run / "log.jsonl").read_text() == lines_before
    result = json.loads((finished_run / "result.json").read_text())
    assert [s["stage"] for s in result["stages"]] == ["align", "reason"]


def test_stage_two_loads_stage_one_strictly(
    copied_run: Path, synth_manifest: Path, feature_cache: Path
) -> None:
    """An unexpected key in stage 1's projectors stops stage 2 with the key named."""
    run_dir = copied_run
    shutil.rmtree(run_dir / "stages" / "reason")
    weights = run_dir / "stages" / "align" / "best" / "model.safetensors"
    state = load_file(str(weights))
    state["projectors.audio.stray_weight"] = torch.zeros(2)
    save_file(state, str(weights))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors \[projectors\].*unexpected keys \['audio\.stray_weight'\]"
    ):
        CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache)).run()


def test_each_stage_records_its_inputs(finished_run: Path) -> None:
    align = json.loads((finished_run / "stages" / "align" / "stage_inputs.json").read_text())
    reason = json.loads((finished_run / "stages" / "reason" / "stage_inputs.json").read_text())
    assert [s["name"] for s in align["stages"]] == ["align"]
    assert [s["name"] for s in reason["stages"]] == ["align", "reason"]  # a stage depends on those before it
    assert "log_every" not in reason["train"] and reason["global_batch"] == 4


@pytest.mark.parametrize(
    ("change", "changed_key", "stage"),
    [
        (lambda raw: raw["stages"][1].update(steps=3), "stages.1.steps", "reason"),
        (lambda raw: raw["stages"][0].update(lr=1.0e-3), "stages.0.lr", "align"),
        (lambda raw: raw["lora"].update(r=8), "lora.r", "align"),
    ],
)
def test_rerun_with_changed_config_refuses_the_stale_stage(
    finished_run: Path, synth_manifest: Path, feature_cache: Path, change, changed_key: str, stage: str
) -> None:
    raw = tiny_config(synth_manifest, finished_run, feature_cache, stages=2)
    change(raw)
    with pytest.raises(StaleStageError, match=rf"stages/{stage}: stage '{stage}' .*changed: {changed_key}\)"):
        CurriculumRecipe(TrainConfig.from_dict(raw, TASKS)).run()


def test_logging_settings_do_not_make_a_stage_stale(
    finished_run: Path, synth_manifest: Path, feature_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CurriculumRecipe, "train_stage", lambda *a, **k: pytest.fail("retrained"))
    raw = tiny_config(synth_manifest, finished_run, feature_cache, stages=2, log_every=5, checkpoint_every=2,
                      attention="eager")
    # A stage's checkpointing, compiling and attention kernel change its speed and memory, not its result.
    raw["stages"][0].update(gradient_checkpointing=True, compile=False)
    assert CurriculumRecipe(TrainConfig.from_dict(raw, TASKS)).run() == finished_run / "final"


def test_stage_from_an_older_version_without_inputs_is_refused(
    copied_run: Path, synth_manifest: Path, feature_cache: Path
) -> None:
    run_dir = copied_run
    (run_dir / "stages" / "align" / "stage_inputs.json").unlink()
    with pytest.raises(StaleStageError, match="records no inputs"):
        CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache)).run()


def test_finished_stage_after_one_that_retrains_is_refused(
    copied_run: Path, synth_manifest: Path, feature_cache: Path
) -> None:
    run_dir = copied_run
    shutil.rmtree(run_dir / "stages" / "align")  # align trains again, so reason's start point changes
    with pytest.raises(StaleStageError, match="stage 'reason' is on disk but stage 'align' before it will be trained"):
        CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache)).run()


class _Crash(RuntimeError):
    pass


def test_a_fresh_attempt_clears_another_attempts_state(
    copied_run: Path, synth_manifest: Path, feature_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leftover resumable state of another config must not survive for a later --resume to pick up;
    a run given neither --resume nor --restart does not discard it silently."""
    run_dir = copied_run
    reason = run_dir / "stages" / "reason"
    (reason / "stage_done.json").unlink()
    (reason / "state").mkdir()
    (reason / "state" / "progress.json").write_text('{"step": 1}')  # as another config's crash left it
    def crash(*args: object, **kwargs: object) -> None:
        raise _Crash  # after the first step, before any state checkpoint (checkpoint_every: 0)

    # Neither --resume nor --restart: refused before anything is touched.
    with pytest.raises(ValueError, match=r"stage 'reason' was stopped at step 1: add --resume .* or --restart"):
        CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache)).run()
    assert (reason / "state" / "progress.json").is_file()
    monkeypatch.setattr(RunLogger, "step", crash)
    with pytest.raises(_Crash):
        CurriculumRecipe(_config(synth_manifest, run_dir, feature_cache), restart=True).run()
    assert not (reason / "state").exists() and not (reason / "best").exists()
    assert json.loads((reason / "stage_inputs.json").read_text())["stages"][1]["name"] == "reason"


def test_the_global_batch_not_the_process_count_is_an_input(synth_manifest: Path, tmp_path: Path) -> None:
    one = TrainConfig.from_dict(tiny_config(synth_manifest, tmp_path, None, stages=1, batch_size=4), TASKS)
    two = TrainConfig.from_dict(tiny_config(synth_manifest, tmp_path, None, stages=1, batch_size=2), TASKS)
    assert stage_inputs(one, 0, {}, world_size=1) == stage_inputs(two, 0, {}, world_size=2)
    assert stage_inputs(one, 0, {}, world_size=2)["global_batch"] == 8


def test_continuing_a_saved_adapter_says_when_the_lora_block_differs(
    finished_run: Path, synth_manifest: Path, feature_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stage whose init is a checkpoint trains the adapter saved there; a lora block that asks for
    other settings is named in a warning instead of being silently ignored."""
    raw = tiny_config(synth_manifest, tmp_path / "run", feature_cache, stages=2)
    raw["stages"] = [{**raw["stages"][1], "init": str(finished_run / "final")}]
    for dropout, warned in ((0.0, False), (0.1, True)):
        raw["lora"]["dropout"] = dropout
        caplog.clear()
        with caplog.at_level("WARNING", logger="affect_llm.training.recipe"):
            model, _ = CurriculumRecipe(TrainConfig.from_dict(raw, TASKS)).setup_model(0, None)
        assert model.language_model.peft_config["default"].lora_dropout == 0.0  # the saved adapter's
        messages = [record.getMessage() for record in caplog.records]
        assert any("dropout 0.0 (config: 0.1)" in message for message in messages) is warned, messages


def test_a_checkpoint_records_the_checkpoint_it_grew_from(finished_run: Path, synth_manifest: Path,
                                                          feature_cache: Path, tmp_path: Path) -> None:
    """A checkpoint trained from a named init records that init's fingerprint, so its own fingerprint
    (what explain outputs and later stages check) changes when the init was retrained."""
    raw = tiny_config(synth_manifest, tmp_path / "run", feature_cache, stages=2)
    raw["stages"] = [{**raw["stages"][1], "init": str(finished_run / "final")}]
    final = CurriculumRecipe(TrainConfig.from_dict(raw, TASKS)).run()
    assert read_metadata(final)["init_checkpoints"] == {"reason": checkpoint_fingerprint(finished_run / "final")}
    assert read_metadata(finished_run / "final")["init_checkpoints"] == {}


def test_an_init_trained_with_another_prompt_is_refused_and_a_new_prompt_makes_stages_stale(
    finished_run: Path, synth_manifest: Path, feature_cache: Path, tmp_path: Path
) -> None:
    """The stage would go on in the checkpoint's prompt while the run recorded the config's; and a
    stage on disk records the prompt file it was trained with, so another version is not reused."""
    from affect_llm.prompts import load_prompt

    saved = read_metadata(finished_run / "final")["prompt"]
    assert saved == load_prompt("tasks").ref
    raw = tiny_config(synth_manifest, tmp_path / "run", feature_cache, stages=2)
    raw["stages"] = [{**raw["stages"][1], "init": str(finished_run / "final")}]
    assert TrainConfig.from_dict(raw, TASKS).init_problems() == []
    raw["prompt_version"] = "v4"
    config = TrainConfig.from_dict(raw, TASKS)
    assert config.init_problems() == [
        f"stage 'reason': init='{finished_run / 'final'}' was trained with prompt {saved}, the config asks for "
        f"{load_prompt('tasks', 'v4').ref}; set prompt_version to the checkpoint's version (or its file was "
        "edited since)"]
    newest = stage_inputs(TrainConfig.from_dict({**raw, "prompt_version": None}, TASKS), 0, {})
    older = stage_inputs(config, 0, {})
    assert newest["prompt"] == saved and changed_keys(older, newest) == ["prompt"]


def test_an_init_that_is_no_checkpoint_is_refused_before_any_stage_trains(synth_manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", None, stages=2)
    raw["stages"][1]["init"] = str(tmp_path / "prevous")
    config = TrainConfig.from_dict(raw, TASKS)
    assert config.init_problems() == [f"stage 'reason': init='{tmp_path / 'prevous'}' is not an affect-llm "
                                      "checkpoint folder (no affect_checkpoint.json); use previous, base or a "
                                      "checkpoint's folder"]
    with pytest.raises(ValueError, match="is not an affect-llm checkpoint folder"):
        CurriculumRecipe(config).run()
    assert not (tmp_path / "run" / "stages").exists()
