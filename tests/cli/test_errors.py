"""Every user error ends a command with one line naming the problem and what to do, and a documented exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from affect_llm.cli import errors
from affect_llm.cli.main import main
from affect_llm.loading.build import build_model
from affect_llm.loading.checkpoint import save_checkpoint
from affect_llm.loading.spec import ModelSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec(llm="tiny:llm", face_encoder="tiny:fer", num_face_tokens=2)
    model, processor = build_model(spec, seed=0)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("ckpt") / "tiny")


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("argv", "expected"), [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["explain", "m.jsonl", "--out", "x.jsonl"], "the following arguments are required: --model"),
    (["explain", "m.jsonl", "--model", "ckpt", "--out", "x", "--batch-size", "zero"], "invalid int value"),
    (["data", "check"], "the following arguments are required: manifest"),
])
def test_bad_arguments(argv: list[str], expected: str, capsys) -> None:
    code, err = _run(argv, capsys)
    line = _one_line(err)
    assert code == errors.EXIT_USAGE and expected in line and "--help" in line


def test_missing_files(tmp_path: Path, checkpoint: Path, capsys) -> None:
    cases = [
        (["explain", str(tmp_path / "m.jsonl"), "--model", str(checkpoint), "--out", str(tmp_path / "o.jsonl")],
         f"manifest not found: {tmp_path / 'm.jsonl'}"),
        (["explain", str(tmp_path / "m.jsonl"), "--model", str(tmp_path / "nockpt"), "--out", str(tmp_path / "o")],
         "no such checkpoint folder; give a folder written by `affect-llm train`"),
        (["serve", "--model", str(tmp_path / "nockpt")],
         "affect-llm serve: error: " + f"{tmp_path / 'nockpt'}: no such checkpoint folder"),
        (["serve", "--model", str(checkpoint), "--host", "0.0.0.0"], "affect-llm serve: error: host=0.0.0.0"),
        (["data", "check", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "c")], "manifest not found"),
        (["train", str(tmp_path / "c.yaml")], "training config not found"),
        (["eval", str(tmp_path / "r.jsonl"), "--refs", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "e")],
         "not found"),
    ]
    for argv, expected in cases:
        code, err = _run(argv, capsys)
        assert code == errors.EXIT_USAGE and expected in _one_line(err), argv
    # Without --out, the report folder would be made beside the manifest: a missing one gets none.
    code, err = _run(["data", "check", str(tmp_path / "gone.jsonl")], capsys)
    assert code == errors.EXIT_USAGE and f"manifest not found: {tmp_path / 'gone.jsonl'}" in _one_line(err)
    assert not (tmp_path / "gone.jsonl.check").exists()


def test_bad_config_names_the_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("stage: {}\n")
    code, err = _run(["train", str(config)], capsys)
    assert code == errors.EXIT_USAGE and "config: unknown keys ['stage']" in _one_line(err)


def test_a_damaged_checkpoint_says_so(tmp_path: Path, checkpoint: Path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "affect_checkpoint.json").write_text("{not json")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "transcript": "hi"}) + "\n")
    code, err = _run(["explain", str(manifest), "--model", str(broken), "--out", str(tmp_path / "o")], capsys)
    assert code == errors.EXIT_USAGE and "the checkpoint is damaged" in _one_line(err)


@pytest.mark.parametrize("weights", ["model.safetensors", "llm/model.safetensors"])
def test_weights_cut_short_name_their_file(tmp_path: Path, checkpoint: Path, weights: str, capsys) -> None:
    """A copy or a save that a full disk cut short: safetensors' own error names no file."""
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    if not (broken / weights).is_file():
        pytest.fail(f"the tiny checkpoint has no {weights}")
    with (broken / weights).open("r+b") as handle:
        handle.truncate((broken / weights).stat().st_size // 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "transcript": "hi"}) + "\n")
    code, err = _run(["explain", str(manifest), "--model", str(broken), "--out", str(tmp_path / "o")], capsys)
    line = err.strip().splitlines()[-1]  # after transformers' loading bar of the LLM read before it
    assert "Traceback" not in err
    where = broken / weights if weights == "model.safetensors" else broken / "llm"
    assert code == errors.EXIT_USAGE and f"{where}: damaged weights" in line, line


def test_an_unprepared_model_names_the_command_and_the_variable(tmp_path: Path, checkpoint: Path, capsys,
                                                                monkeypatch) -> None:
    embedded = tmp_path / "embedded"
    shutil.copytree(checkpoint, embedded)
    config = json.loads((embedded / "config.json").read_text())
    config["component_paths"]["face"] = "fer-mini-xception"  # an embedded model, resolved at load time
    (embedded / "config.json").write_text(json.dumps(config))
    # Referenced, not stored (as a trained checkpoint keeps a frozen pretrained encoder): a part the
    # checkpoint holds is loaded from it and its reference is not resolved.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(embedded / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("encoders.face.")},
              str(embedded / "model.safetensors"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "transcript": "hi"}) + "\n")
    monkeypatch.setenv("AFFECT_LLM_MODELS", str(tmp_path / "wrong"))
    code, err = _run(["explain", str(manifest), "--model", str(embedded), "--out", str(tmp_path / "o")], capsys)
    line = _one_line(err)
    assert code == errors.EXIT_USAGE
    assert "run `affect-llm models prepare fer-mini-xception`" in line
    assert f"set AFFECT_LLM_MODELS to the folder they were prepared in (it is now {tmp_path / 'wrong'})" in line


def test_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    code, err = _run(["--debug", "data", "check", str(tmp_path / "m.jsonl")], capsys)
    assert code == errors.EXIT_USAGE and "Traceback" in err and err.strip().endswith("manifest not found: " +
                                                                                      str(tmp_path / "m.jsonl"))
    code, err = _run(["data", "check", str(tmp_path / "m.jsonl"), "--debug"], capsys)  # after the subcommand too
    assert "Traceback" in err


def test_an_internal_error_is_one_line_and_its_traceback_goes_to_the_log(tmp_path: Path, capsys,
                                                                         monkeypatch) -> None:
    import affect_llm.data.check

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(affect_llm.data.check, "check_manifest", broken)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "transcript": "hi"}) + "\n")
    code, err = _run(["data", "check", str(manifest), "--out", str(tmp_path / "c")], capsys)
    line = _one_line(err)
    assert code == errors.EXIT_INTERNAL and "internal error: RuntimeError: boom" in line
    log = tmp_path / "c" / "check.log"
    assert f"traceback in {log}" in line and "Traceback" in log.read_text()


def test_the_readme_lists_every_exit_code() -> None:
    readme = (REPO / "README.md").read_text()
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    for code in codes:
        assert f"| {code} |" in readme, f"exit code {code} is not in the README's table"


def test_an_error_raised_in_a_loader_worker_is_told_by_its_own_line():
    """torch re-raises a worker's error with the worker's traceback as its text: the line says what it was."""
    from affect_llm.training.loader import FeatureCacheEntryError

    text = ("Caught FeatureCacheEntryError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
            "last):\n  File \"worker.py\", line 1, in loop\naffect_llm.training.loader.FeatureCacheEntryError: "
            "row 'a': its features in /c/shards/x.data are missing or failed their checksum\n")
    code, message = errors.classify(FeatureCacheEntryError(text))
    assert code == errors.EXIT_USAGE
    assert message.startswith("row 'a': its features in /c/shards/x.data")
    assert "Traceback" not in message


def test_a_read_only_target_is_a_user_error():
    import errno as errnos

    code, message = errors.classify(OSError(errnos.EROFS, "Read-only file system", "/ro/merged.tmp"))
    assert code == errors.EXIT_USAGE and message.startswith("cannot write /ro/merged.tmp: read-only file system")


def test_output_closed_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """`affect-llm data check m.jsonl | head` where head has already gone: the real command in its own
    process, its standard output a pipe whose reading end is closed before it prints anything."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "transcript": "What a lovely day!", "labels": ["happy"]}) + "\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "data", "check", str(manifest)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert done.returncode == errors.EXIT_READER_GONE, done.stderr
    assert done.stderr == ""  # no "internal error", no "Exception ignored ... BrokenPipeError"
    assert (tmp_path / "m.jsonl.check" / "report.json").exists()  # the check itself finished
    assert "standard output was closed by its reader" in (tmp_path / "m.jsonl.check" / "check.log").read_text()
