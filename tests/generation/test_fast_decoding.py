"""Faster decoding that keeps the answers: the adapter folded into the weights, and compiled decoding."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from genhelpers import TINY_SPEC, noise_requests, read_rows

from affect_llm.generation.backend import DecodingSettings
from affect_llm.generation.hf_backend import HFBackend
from affect_llm.loading.build import build_model
from affect_llm.modeling.trainable import LoraSettings, apply_lora, is_peft_wrapped


def test_folding_the_adapter_in_keeps_the_greedy_answers() -> None:
    model, processor = build_model(TINY_SPEC, seed=0)
    apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: peft starts B at zero, which would change nothing
        for name, param in model.language_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    requests = noise_requests(processor)
    settings = DecodingSettings(max_new_tokens=12)
    attached = HFBackend(model, processor, merge_lora=False).generate(requests, settings)
    assert is_peft_wrapped(model)
    merged = HFBackend(model, processor).generate(requests, settings)
    assert not is_peft_wrapped(model)
    assert not any("lora" in name for name, _ in model.language_model.named_modules())
    assert merged == attached


def _explain(manifest: Path, checkpoint: Path, out: Path, *extra: str) -> list[dict]:
    command = [sys.executable, "-m", "affect_llm.cli.main", "explain", str(manifest), "--model", str(checkpoint),
               "--out", str(out), "--batch-size", "3", "--max-new-tokens", "10", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    # inductor's autotuning tables stay off the terminal (a chat prints its answers there too).
    assert "AUTOTUNE" not in done.stderr and "Autotune" not in done.stderr
    return sorted(read_rows(out), key=lambda row: row["id"])


def test_compiled_decoding_gives_the_same_answers_through_the_cli(small_manifest, tiny_checkpoint, tmp_path) -> None:
    """Six clips in batches of three: one compile, then the compiled step reused for the second batch."""
    eager = _explain(small_manifest, tiny_checkpoint, tmp_path / "eager.jsonl")
    compiled = _explain(small_manifest, tiny_checkpoint, tmp_path / "compiled.jsonl", "--compile")
    assert [row["raw"] for row in compiled] == [row["raw"] for row in eager]
    assert [row["error"] for row in compiled] == [row["error"] for row in eager]  # the same parse outcome


def test_drafted_answers_one_clip_at_a_time_are_those_of_one_token_a_step(small_manifest, tiny_checkpoint,
                                                                          tmp_path) -> None:
    """``explain --batch-size 1`` verifies drafts by default; ``--draft-tokens 0`` decodes a token a step.
    The run asked for drafts resumes over the other's rows: drafts do not change answers."""
    plain = _explain(small_manifest, tiny_checkpoint, tmp_path / "plain.jsonl", "--batch-size", "1",
                     "--max-new-tokens", "24", "--draft-tokens", "0")
    drafted = _explain(small_manifest, tiny_checkpoint, tmp_path / "drafted.jsonl", "--batch-size", "1",
                       "--max-new-tokens", "24")
    assert [row["raw"] for row in drafted] == [row["raw"] for row in plain]
    assert {row["decoding"]["draft_tokens"] for row in drafted} == {8}
    shutil.copy(tmp_path / "plain.jsonl", tmp_path / "mixed.jsonl")
    mixed = _explain(small_manifest, tiny_checkpoint, tmp_path / "mixed.jsonl", "--batch-size", "1",
                     "--max-new-tokens", "24")
    assert mixed == plain  # every row already there: nothing decoded again
    command = [sys.executable, "-m", "affect_llm.cli.main", "explain", str(small_manifest), "--model",
               str(tiny_checkpoint), "--out", str(tmp_path / "bad.jsonl"), "--draft-tokens", "-1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "argument --draft-tokens: must be 0 or more, got -1" in done.stderr


@pytest.mark.parametrize(("extra", "message"), [
    (["--backend", "vllm"], "--compile is for --backend hf"),
    # transformers skips compiling a bitsandbytes 4-bit LLM (a warning in the log): refused up front instead.
    # The flag asked for 4-bit, not the (float32) checkpoint: the message names the flag.
    (["--load-in-4bit"], "--compile with --load-in-4bit: transformers does not compile a 4-bit LLM"),
])
def test_compile_is_refused_where_it_would_not_apply(small_manifest, tiny_checkpoint, tmp_path, extra, message) -> None:
    command = [sys.executable, "-m", "affect_llm.cli.main", "explain", str(small_manifest), "--model",
               str(tiny_checkpoint), "--out", str(tmp_path / "out.jsonl"), "--compile", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_streamed_compiled_answer_is_the_eager_one() -> None:
    """The chat's path: one request streamed through the compiled step, text equal to the eager batch's."""
    model, processor = build_model(TINY_SPEC, seed=0)
    backend = HFBackend(model, processor)
    request = noise_requests(processor, count=1)[0]
    eager = backend.generate([request], DecodingSettings(max_new_tokens=12))
    pieces = list(backend.stream(request, DecodingSettings(max_new_tokens=12, compile=True)))
    assert len(pieces) > 1  # handed over as decoded, not at the end
    assert "".join(pieces) == eager[0]


def test_only_full_attention_layers_take_the_copied_static_cache() -> None:
    """A sliding-window layer keeps only its window: such an LLM decodes eagerly instead."""
    from transformers import LlamaConfig, Qwen2Config

    from affect_llm.generation.compiled_step import supports_static_copy

    small = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
             "num_hidden_layers": 2, "vocab_size": 64}
    assert supports_static_copy(LlamaConfig(**small))
    assert not supports_static_copy(Qwen2Config(**small, use_sliding_window=True, sliding_window=8, max_window_layers=0))


def test_compiled_decoding_on_a_cpu_lays_out_the_plain_layers_itself_and_keeps_the_answers() -> None:
    """On a CPU the compiled step freezes the LLM's weights into its graph (inductor lays them out and
    autotunes its matmuls): layers packed for the eager loop are unpacked first, the answers are the
    eager ones, and a weight changed after the compile is not read by the compiled steps (the graph
    holds its own copy), which is what tells a frozen graph from one that takes the weights as inputs."""
    from affect_llm.generation.packed_linear import PackedLinear, packing_available

    torch._dynamo.reset()
    model, processor = build_model(TINY_SPEC, seed=0)
    backend = HFBackend(model, processor, pack_weights=True)
    packed = any(isinstance(m, PackedLinear) for m in model.language_model.modules())
    assert packed == packing_available()
    request = noise_requests(processor, count=1)[0]
    eager = backend.generate([request], DecodingSettings(max_new_tokens=12))
    compiled = backend.generate([request], DecodingSettings(max_new_tokens=12, compile=True))
    assert compiled == eager
    assert not any(isinstance(m, PackedLinear) for m in model.language_model.modules())
    with torch.no_grad():  # a different LLM from here on, for the eager forward
        for layer in model.language_model.model.layers:
            layer.mlp.down_proj.weight.mul_(-3.0)
    changed = backend.generate([request], DecodingSettings(max_new_tokens=12))
    assert changed != eager
    after = backend.generate([request], DecodingSettings(max_new_tokens=12, compile=True))
    assert after != changed  # the prompt's forward reads the new weights, the compiled steps the frozen ones


def test_compiled_decoding_of_many_rows_keeps_the_packed_layers_and_the_answers() -> None:
    """A backend that decodes many rows at once (``explain --compile --batch-size 16`` or more) compiles
    its step over the layers packed for oneDNN instead of freezing plain ones: the layers stay packed, the
    graph takes the weights as inputs (a weight changed after the compile is read by the compiled
    steps), and the answers of a batch are the eager ones."""
    from affect_llm.generation.compiled_step import PACKED_COMPILE_MIN_ROWS
    from affect_llm.generation.packed_linear import PackedLinear, packing_available

    if not packing_available():
        pytest.skip("this torch has no oneDNN packed linear op")
    torch._dynamo.reset()
    model, processor = build_model(TINY_SPEC, seed=0)
    backend = HFBackend(model, processor, pack_weights=True, rows=PACKED_COMPILE_MIN_ROWS)
    requests = noise_requests(processor, count=3)
    eager = backend.generate(requests, DecodingSettings(max_new_tokens=12))
    compiled = backend.generate(requests, DecodingSettings(max_new_tokens=12, compile=True))
    assert compiled == eager
    assert backend._decoder.keep_packed
    assert any(isinstance(m, PackedLinear) for m in model.language_model.modules())
    with torch.no_grad():  # a different LLM from here on
        model.language_model.model.norm.weight.mul_(-3.0)
    changed = backend.generate(requests, DecodingSettings(max_new_tokens=12))
    assert changed != eager
    assert backend.generate(requests, DecodingSettings(max_new_tokens=12, compile=True)) == changed


def test_a_backend_loaded_for_compiled_decoding_leaves_the_layout_to_the_compiled_step(tiny_checkpoint) -> None:
    """``explain``, ``chat`` and ``serve`` with ``--compile`` decode every answer through the compiled step,
    which on a CPU lays out the weights itself: the eager layout is neither measured nor made."""
    from affect_llm.generation.load import load_backend
    from affect_llm.generation.packed_linear import PackedLinear

    backend = load_backend("hf", tiny_checkpoint, compiled=True)
    assert backend.packing is None
    assert not any(isinstance(m, PackedLinear) for m in backend.model.language_model.modules())


def test_a_backend_loaded_for_compiled_decoding_of_many_rows_measures_the_packing(tiny_checkpoint) -> None:
    """From ``PACKED_COMPILE_MIN_ROWS`` rows the compiled step runs over packed layers, so the backend
    measures packing at those rows as an eager one does."""
    from affect_llm.generation.compiled_step import PACKED_COMPILE_MIN_ROWS
    from affect_llm.generation.load import load_backend
    from affect_llm.generation.packed_linear import packed_linear_layers, packing_available

    backend = load_backend("hf", tiny_checkpoint, compiled=True, rows=PACKED_COMPILE_MIN_ROWS)
    assert (backend.packing is not None) == packing_available()
    if backend.packing is not None:
        assert backend.packing.rows == PACKED_COMPILE_MIN_ROWS
        assert (packed_linear_layers(backend.model.language_model) > 0) == backend.packing.pays
