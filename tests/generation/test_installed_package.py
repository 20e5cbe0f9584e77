"""A normal (non-editable) ``pip install .`` runs ``affect-llm explain`` on a checkpoint, away from the repository.

The fresh virtual environment gets the package itself from a built wheel and borrows its
dependencies (torch, transformers, ...) from the test environment through a path file, so nothing is
downloaded; the package files it runs are the installed copies, which is what this test is about:
prompts and everything else a task needs ship inside the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("installed")
    env_dir = root / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Dependencies come from this environment; its own editable copy of the package is not a site dir
    # here, so it is not imported.
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = root / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(wheels.glob("affect_llm-*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir


def test_installed_copy_is_what_runs(installed_env: Path, tmp_path: Path) -> None:
    code = ("import affect_llm; from affect_llm.prompts import load_prompt; "
            "print(affect_llm.__file__); print(load_prompt('tasks').path); print(load_prompt('judge').path)")
    done = subprocess.run([str(installed_env / "bin" / "python"), "-c", code],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    paths = done.stdout.split()
    assert len(paths) == 3 and all(str(installed_env) in p and str(REPO) not in p for p in paths)


def test_installed_package_explains_a_manifest(installed_env: Path, tiny_checkpoint: Path, small_manifest: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [str(installed_env / "bin" / "python"), "-m", "affect_llm.cli.main", "explain", str(small_manifest),
         "--model", str(tiny_checkpoint), "--out", str(out), "--max-new-tokens", "4", "--batch-size", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(row["prompt"].startswith("tasks@") for row in rows)
