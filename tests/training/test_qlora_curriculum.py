"""A three-stage QLoRA curriculum through the real CLI keeps its LLM in 4-bit NF4 in every stage.

bitsandbytes quantizes to 4-bit on the CPU, so this runs here as it runs on a GPU: a tiny LLM saved
with ``save_pretrained`` (4-bit quantization happens while loading weights) under
``model.quantization: 4bit``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trainhelpers import tiny_config, write_config

from affect_llm.modeling.tiny import tiny_config as tiny_component_config
from affect_llm.modeling.tiny import tiny_tokenizer

STAGES = ("align", "reason", "polish")


@pytest.fixture(scope="module")
def tiny_llm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llm")
    # Layer widths as in real LLMs (inputs a multiple of 64, outputs of 32): on CPUs with AVX512-BF16,
    # bitsandbytes (0.50) repacks frozen 4-bit weights into such blocks and fails on narrower layers.
    config = tiny_component_config("llm")
    config.hidden_size, config.intermediate_size = 128, 128
    config.head_dim = config.hidden_size // config.num_attention_heads  # keys and values: 2 heads x 32
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _qlora_config(manifest: Path, run_dir: Path, cache: Path, llm: Path) -> dict:
    raw = tiny_config(manifest, run_dir, cache, stages=2)
    raw["model"].update(llm=str(llm), quantization="4bit")
    third = dict(raw["stages"][1], name="polish", steps=2)
    raw["stages"].append(third)
    return raw


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affect_llm.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def qlora_run(synth_manifest: Path, feature_cache: Path, tiny_llm_folder: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("qlora")
    config = write_config(work / "qlora.yaml", _qlora_config(synth_manifest, work / "run", feature_cache,
                                                             tiny_llm_folder))
    done = _cli("train", str(config), cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "run"


def test_every_stage_trains_a_4bit_llm(qlora_run: Path) -> None:
    stages = json.loads((qlora_run / "result.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == list(STAGES)
    for summary in stages:
        # 2 decoder layers x 7 projections in NF4; only the head stays an ordinary linear layer.
        assert summary["llm_weights"]["linear_4bit"] == 14, summary["stage"]
        assert summary["llm_weights"]["linear"] == 1, summary["stage"]


def test_run_folder_and_checkpoints_record_the_precision(qlora_run: Path) -> None:
    info = json.loads((qlora_run / "run_info.json").read_text())
    assert info["precision"]["quantization"] == "4bit"
    assert "NF4" in info["precision"]["rule"]
    for stage in STAGES:
        config = json.loads((qlora_run / "stages" / stage / "best" / "config.json").read_text())
        assert config["precision"] == {"dtype": "float32", "quantization": "4bit", "encoder_dtype": None}


def test_check_prints_the_resolved_precision(synth_manifest: Path, feature_cache: Path, tiny_llm_folder: Path,
                                             tmp_path: Path) -> None:
    config = write_config(tmp_path / "qlora.yaml",
                          _qlora_config(synth_manifest, tmp_path / "run", feature_cache, tiny_llm_folder))
    done = _cli("train", str(config), "train.precision=bf16", "--check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("precision: LLM weights NF4 4-bit (compute float32); encoders float32; projectors and LoRA "
            "float32; training forward in bf16 (autocast bf16)") in done.stdout


def test_4bit_on_an_llm_built_from_a_config_is_refused(synth_manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", None)
    raw["model"]["quantization"] = "4bit"
    done = _cli("train", str(write_config(tmp_path / "bad.yaml", raw)), "--check", cwd=tmp_path)
    assert done.returncode != 0
    assert "4-bit quantization happens while loading" in done.stderr


def test_merged_qlora_checkpoint_is_unquantized_and_answers_like_the_4bit_one(qlora_run: Path, tmp_path: Path) -> None:
    """Dequantise, merge, save: the merged LLM holds the weights the adapter was trained against."""
    import torch

    from affect_llm.loading.checkpoint import load_checkpoint, merge_checkpoint

    merged = merge_checkpoint(qlora_run / "final", tmp_path / "merged")
    config = json.loads((merged / "config.json").read_text())
    assert config["precision"]["quantization"] == "none"
    quantized, processor = load_checkpoint(qlora_run / "final")
    plain, _ = load_checkpoint(merged)
    assert not getattr(plain.language_model, "is_loaded_in_4bit", False)
    # On CPUs with AVX512-BF16, bitsandbytes runs frozen 4-bit layers in bf16 on repacked weights; the
    # merge is compared with the fp32 dequantised path, which is what the merged weights hold.
    for module in quantized.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    ids = processor(
        [processor.build_messages("perceive", ())], None
    )["input_ids"]
    with torch.no_grad():
        expected = quantized(input_ids=ids).logits
        got = plain(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()


def test_the_hf_backend_leaves_a_4bit_llm_unpacked(qlora_run: Path, tmp_path: Path) -> None:
    """Packed layers are for float32 weights: a merged checkpoint loaded in 4-bit (no adapter left to
    keep it from packing) keeps its bitsandbytes layers and its head as loaded, and still answers."""
    from affect_llm.generation.backend import DecodingSettings, GenerationRequest
    from affect_llm.generation.hf_backend import HFBackend
    from affect_llm.generation.packed_linear import PackedLinear
    from affect_llm.loading.checkpoint import load_checkpoint, merge_checkpoint, recorded_precision

    merged = merge_checkpoint(qlora_run / "final", tmp_path / "merged")
    model, processor = load_checkpoint(merged, precision=recorded_precision(merged).overridden(load_in_4bit=True))
    assert getattr(model.language_model, "is_loaded_in_4bit", False)
    backend = HFBackend(model, processor)
    assert not any(isinstance(module, PackedLinear) for module in model.modules())
    request = GenerationRequest(processor.build_messages("perceive", ()), processor.prepare_media())
    assert len(backend.generate([request], DecodingSettings(max_new_tokens=4))) == 1


def test_a_killed_4bit_run_resumes_to_the_losses_of_an_uninterrupted_one(
    synth_manifest: Path, feature_cache: Path, tiny_llm_folder: Path, tmp_path: Path
) -> None:
    """A 4-bit layer stores non-parameters beside its frozen weight (bitsandbytes' ``absmax``,
    ``quant_state``); the saved training state must leave them out, or no QLoRA run resumes."""
    import os

    from trainhelpers import read_losses, run_and_kill

    def config(folder: Path) -> Path:
        raw = tiny_config(synth_manifest, folder / "run", feature_cache, stages=1, checkpoint_every=2)
        raw["model"].update(llm=str(tiny_llm_folder), quantization="4bit")
        raw["stages"][0].update(trainable=["projectors", "lora"], steps=6)
        folder.mkdir()
        return write_config(folder / "config.yaml", raw)

    straight = config(tmp_path / "straight")
    done = _cli("train", str(straight), cwd=straight.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = read_losses(straight.parent / "run")

    killed = config(tmp_path / "killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "affect_llm.cli.main", "train", str(killed)]
    last = run_and_kill(command, killed.parent, env, killed.parent / "run" / "log.jsonl", after_step=3)
    state = killed.parent / "run" / "stages" / "align" / "state"
    assert (state / "progress.json").is_file(), f"killed after step {last} with no saved state"
    done = _cli("train", str(killed), "--resume", cwd=killed.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_losses(killed.parent / "run")
    assert sorted(resumed) == sorted(expected) == list(range(1, 7))
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), f"step {step} (killed after step {last})"
