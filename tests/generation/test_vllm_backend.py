"""vLLM backend: what is served, how decoding maps, clear errors, and HF parity when vLLM is set up."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affect_llm.generation.backend import DecodingSettings
from affect_llm.generation.load import load_backend
from affect_llm.generation.vllm_backend import WorkerEngine, engine_defaults, sampling_options
from affect_llm.generation.vllm_worker import InProcessEngine, VLLMUnavailableError
from affect_llm.loading.checkpoint import served_llm_dir

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm/bin/python"


def test_merged_checkpoint_serves_its_llm_folder(tiny_checkpoint):
    assert served_llm_dir(tiny_checkpoint) == str(tiny_checkpoint / "llm")


def test_unmerged_adapter_is_refused_with_the_merge_command(tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / "with-adapter"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "adapter").mkdir()  # what a LoRA checkpoint holds beside the base weights
    with pytest.raises(ValueError, match="affect-llm merge"):
        served_llm_dir(checkpoint)
    with pytest.raises(ValueError, match="LoRA adapter"):
        load_backend("vllm", str(checkpoint))


def test_greedy_and_sampled_settings_map_onto_sampling_params():
    greedy = sampling_options(DecodingSettings(max_new_tokens=7, seed=3), eos_token_id=5)
    assert greedy == {
        "max_tokens": 7,
        "seed": 3,
        "detokenize": False,
        "temperature": 0.0,
        "stop_token_ids": [5],
    }
    sampled = sampling_options(
        DecodingSettings(do_sample=True, temperature=0.5, top_p=0.8), eos_token_id=None
    )
    assert sampled["temperature"] == 0.5 and sampled["top_p"] == 0.8 and "stop_token_ids" not in sampled


def test_missing_vllm_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(VLLMUnavailableError, match="setup_vllm.sh"):
        InProcessEngine("unused", {})


def test_missing_worker_interpreter_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-python"):
        WorkerEngine(str(tmp_path / "no-python"), "unused", {})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affect_llm.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_a_worker_that_cannot_start_vllm_is_a_user_error_quoting_its_output(tiny_checkpoint, tmp_path):
    """A worker interpreter without vLLM (here the project's own, as after a wrong --vllm-python), and one
    that dies at once: exit 2, the interpreter and the worker's own last words named."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "transcript": "Hello there."}\n')
    explain = ["explain", str(manifest), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o.jsonl"),
               "--backend", "vllm"]
    if shutil.which("vllm", path=str(Path(sys.executable).parent)) is None:
        done = _cli(*explain, "--vllm-python", sys.executable)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert f"vLLM worker ({sys.executable})" in last and "vllm is not installed" in last
        assert "--vllm-python" in last
    dying = tmp_path / "python"
    dying.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                     "echo \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    dying.chmod(0o755)
    done = _cli(*explain, "--vllm-python", str(dying))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"the vLLM worker ({dying}) exited with code 1: Traceback (most recent call last): | "
        "ModuleNotFoundError: No module named 'torch'")


def test_a_worker_gone_before_it_reads_its_request_is_named_with_its_exit(tmp_path):
    """A worker that dies at once may be gone before the first request is written: the write then
    meets a closed pipe, which must read as the worker's exit and last words, not an internal error.
    Here the worker has exited for certain before the request, so the write always meets the closed pipe."""
    from affect_llm.generation.vllm_worker import VLLMEngineError

    log = tmp_path / "worker.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(["sh", "-c", "echo 'ImportError: no vllm' >&2; exit 3"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    process.wait()
    engine = WorkerEngine.__new__(WorkerEngine)  # the engine's parts that _request reads, without starting one
    engine.python, engine.process, engine.log_path = "/opt/py/bin/python", process, log
    with pytest.raises(VLLMEngineError, match=r"the vLLM worker \(/opt/py/bin/python\) exited with code 3: "
                                              r"ImportError: no vllm$"):
        engine._request({"llm": "x", "options": {}})
    assert process.stdin.closed  # nothing left to fail again when the pipe is collected


def test_precision_flags_reach_the_vllm_engine_or_are_refused(tiny_checkpoint, tmp_path):
    import argparse

    from affect_llm.cli.errors import UsageError
    from affect_llm.cli.options import engine_options_from_arguments

    def options(**given):
        defaults = {"engine_arg": [], "vllm_python": None, "backend": "vllm", "dtype": None, "load_in_4bit": None}
        return engine_options_from_arguments(argparse.Namespace(**{**defaults, **given}))

    assert options(dtype="bfloat16") == {"dtype": "bfloat16"}  # the engine decodes in it, not only the embedder
    assert options(dtype="bfloat16", engine_arg=["dtype=bfloat16"]) == {"dtype": "bfloat16"}
    with pytest.raises(UsageError, match="--dtype bfloat16 and --engine-arg dtype=float16 disagree"):
        options(dtype="bfloat16", engine_arg=["dtype=float16"])
    assert options(backend="hf", dtype="bfloat16") == {}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "transcript": "Hello there."}\n')
    done = _cli("explain", str(manifest), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o.jsonl"),
                "--backend", "vllm", "--load-in-4bit")
    assert done.returncode == 2 and "--engine-arg quantization=bitsandbytes" in done.stderr


def test_engine_options_reach_the_engine_over_the_device_defaults(tiny_checkpoint, monkeypatch):
    import affect_llm.generation.vllm_backend as vllm_backend

    seen = {}

    class RecordingEngine:
        def __init__(self, llm_dir, options):
            seen.update(llm_dir=llm_dir, options=options)

    monkeypatch.setattr(vllm_backend, "InProcessEngine", RecordingEngine)
    monkeypatch.delenv("AFFECT_LLM_VLLM_PYTHON", raising=False)
    backend = load_backend("vllm", str(tiny_checkpoint), max_model_len=4096, enforce_eager=True,
                           tensor_parallel_size=1)
    assert seen["llm_dir"] == str(tiny_checkpoint / "llm")
    assert seen["options"] == {**engine_defaults(torch.device("cpu")), "max_model_len": 4096, "enforce_eager": True,
                               "tensor_parallel_size": 1}
    # What result rows record as the engine's precision: the options that decode, defaults included.
    assert backend.engine_options == {**seen["options"], "dtype": "float32"}


def test_gpu_engine_defaults_leave_dtype_and_context_to_the_model():
    assert engine_defaults(torch.device("cpu"))["dtype"] == "float32"
    assert engine_defaults(torch.device("cuda")) == {"gpu_memory_utilization": 0.8}


@pytest.mark.slow
@pytest.mark.skipif(
    not VLLM_PYTHON.is_file(), reason=".venv-vllm is absent (bash scripts/setup_vllm.sh makes it)"
)
def test_vllm_matches_hf_greedy():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/check_vllm.py"),
            "--prompts",
            "2",
            "--max-new-tokens",
            "8",
            "--vllm-python",
            str(VLLM_PYTHON),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Two clips with every channel and one of each missing-channel subset, all identical.
    summary = re.search(r"check_vllm: (\d+)/(\d+) greedy answers identical", result.stdout)
    assert summary is not None and summary[1] == summary[2] and int(summary[2]) > 2, result.stdout[-2000:]
