"""A checkpoint written in format 1 (by the code of commit FORMAT1_COMMIT) gives the same greedy answers
after ``affect-llm checkpoint upgrade``.

The format-1 checkpoint is made by the old code itself, checked out of this repository's history
into a temporary worktree, so the test reads what that code really wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from affect_llm.loading.checkpoint import CheckpointError, load_checkpoint, read_metadata
from affect_llm.loading.upgrade import upgrade_checkpoint

REPO = Path(__file__).resolve().parents[2]
FORMAT1_COMMIT = "bbbdcfc"  # the last commit that wrote format 1

# Runs under the old code: a tiny LoRA model, saved in format 1, and its greedy answers.
OLD_SIDE = """
import json, sys, numpy as np, torch
from affect_llm.modeling.builder import ModelSpec, build_model
from affect_llm.modeling.checkpoint import save_checkpoint
from affect_llm.modeling.trainable import LoraSettings, apply_lora
spec = ModelSpec(llm="tiny:llm", audio_encoder="tiny:whisper", face_encoder="tiny:fer", audio_window_seconds=2.0,
                 num_audio_tokens=3, num_face_tokens=2)
model, processor = build_model(spec, seed=0)
apply_lora(model, LoraSettings(r=4))
torch.manual_seed(1)
for name, param in model.named_parameters():
    if "lora_B" in name or name.startswith("projectors."):
        param.data.normal_(0.0, 0.2)
save_checkpoint(model, processor, sys.argv[1], metadata={"step": 7})
rng = np.random.default_rng(0)
audio = rng.standard_normal(16000).astype(np.float32) * 0.1
face = rng.integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
media = processor.prepare_media(audio=audio, face=face)
messages = processor.build_messages("perceive", ["audio", "face"], transcript="hello there")
batch = processor([messages], [media])
model.eval()
out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id,
                     eos_token_id=processor.tokenizer.eos_token_id, temperature=None, top_p=None, top_k=None)
json.dump(out.tolist(), open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def format1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    work = tmp_path_factory.mktemp("format1")
    old_tree = work / "old"
    added = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), FORMAT1_COMMIT],
                           capture_output=True, text=True)
    assert added.returncode == 0, f"cannot check out {FORMAT1_COMMIT}: {added.stderr}"
    try:
        env = {"PYTHONPATH": str(old_tree), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_VERBOSITY": "error", "HOME": str(Path.home())}
        done = subprocess.run([sys.executable, "-c", OLD_SIDE, str(work / "ckpt"), str(work / "answers.json")],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
    return work / "ckpt", json.loads((work / "answers.json").read_text())


def test_the_old_code_wrote_format_1(format1_checkpoint):
    checkpoint, _ = format1_checkpoint
    assert json.loads((checkpoint / "affect_checkpoint.json").read_text())["format_version"] == 1
    assert (checkpoint / "projectors.safetensors").is_file()


def test_loading_format_1_names_the_upgrade_command(format1_checkpoint):
    checkpoint, _ = format1_checkpoint
    with pytest.raises(CheckpointError, match="affect-llm checkpoint upgrade"):
        read_metadata(checkpoint)


def test_upgraded_checkpoint_gives_identical_greedy_answers(format1_checkpoint, tmp_path):
    checkpoint, old_answers = format1_checkpoint
    upgraded = upgrade_checkpoint(checkpoint, tmp_path / "v2")
    assert read_metadata(upgraded)["step"] == 7
    model, processor = load_checkpoint(upgraded)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(16000).astype(np.float32) * 0.1
    face = rng.integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
    messages = processor.build_messages("perceive", ["audio", "face"], transcript="hello there")
    batch = processor([messages], [processor.prepare_media(audio=audio, face=face)])
    with torch.no_grad():
        out = model.eval().generate(**batch, max_new_tokens=12, do_sample=False,
                                    pad_token_id=processor.tokenizer.pad_token_id,
                                    eos_token_id=processor.tokenizer.eos_token_id,
                                    temperature=None, top_p=None, top_k=None)
    assert out.tolist() == old_answers


def test_upgrade_refuses_to_overwrite(format1_checkpoint, tmp_path):
    checkpoint, _ = format1_checkpoint
    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        upgrade_checkpoint(checkpoint, tmp_path / "taken")


def test_upgrade_cli(format1_checkpoint, tmp_path):
    checkpoint, _ = format1_checkpoint
    copy = tmp_path / "old"
    shutil.copytree(checkpoint, copy)
    done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "checkpoint", "upgrade", str(copy),
                           str(tmp_path / "new")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "new" / "model.safetensors").is_file()


@pytest.mark.parametrize(("text", "message"), [
    ('{"format_version": 1', "not readable as JSON"),
    ("[1]", "holds a list, not the checkpoint's metadata object"),
    ('{"format_version": 1}', "field 'stored' must list what the checkpoint holds, got None"),
])
def test_damaged_metadata_is_named_and_nothing_is_left_behind(tmp_path, text, message):
    damaged = tmp_path / "old"
    damaged.mkdir()
    (damaged / "affect_checkpoint.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        upgrade_checkpoint(damaged, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_missing_or_file_checkpoint_is_named_as_such(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'gone'}: no such checkpoint folder"):
        upgrade_checkpoint(tmp_path / "gone", tmp_path / "new")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="a file, not a checkpoint folder"):
        upgrade_checkpoint(tmp_path / "weights.bin", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_conversion_that_fails_leaves_no_half_written_folder(format1_checkpoint, tmp_path):
    checkpoint, _ = format1_checkpoint
    copy = tmp_path / "old"
    shutil.copytree(checkpoint, copy)
    (copy / "projectors.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        upgrade_checkpoint(copy, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
