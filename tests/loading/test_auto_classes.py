"""One checkpoint format: what training writes is what the transformers auto classes read.

``import affect_llm`` registers the classes; no ``trust_remote_code``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from affect_llm.loading.checkpoint import (
    load_checkpoint,
    load_prompt_embedder,
    merge_checkpoint,
    save_checkpoint,
)
from affect_llm.modeling.trainable import LoraSettings, apply_lora

AUTO_LOAD = """
import sys, torch, affect_llm
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor
path = sys.argv[1]
config = AutoConfig.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()
processor = AutoProcessor.from_pretrained(path)
batch = processor([processor.build_messages("perceive", ["face"], transcript="hello")],
                  [processor.prepare_media(face=torch.full((2, 40, 40, 3), 90, dtype=torch.uint8).numpy())])
with torch.no_grad():
    logits = model(**batch).logits
print(type(config).__name__, type(model).__name__, type(processor).__name__, hasattr(model.language_model, "peft_config"))
torch.save(logits, sys.argv[2])
"""


def _face_batch(processor):
    face = np.full((2, 40, 40, 3), 90, dtype=np.uint8)
    return processor([processor.build_messages("perceive", ["face"], transcript="hello")],
                     [processor.prepare_media(face=face)])


def _lora_checkpoint(tiny_model, tmp_path):
    model, processor = tiny_model
    apply_lora(model, LoraSettings(r=4))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.1)
    model.eval()
    with torch.no_grad():
        expected = model(**_face_batch(processor)).logits
    return save_checkpoint(model, processor, tmp_path / "ckpt"), expected


def _auto_load_in_fresh_process(path, out):
    done = subprocess.run([sys.executable, "-c", AUTO_LOAD, str(path), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split(), torch.load(out)


def test_auto_classes_load_a_lora_checkpoint(tiny_model, tmp_path):
    checkpoint, expected = _lora_checkpoint(tiny_model, tmp_path)
    names, logits = _auto_load_in_fresh_process(checkpoint, tmp_path / "logits.pt")
    assert names == ["AffectConfig", "AffectForConditionalGeneration", "AffectProcessor", "True"]
    assert torch.equal(logits, expected)


def test_auto_classes_load_a_merged_checkpoint(tiny_model, tmp_path):
    checkpoint, expected = _lora_checkpoint(tiny_model, tmp_path)
    merged = merge_checkpoint(checkpoint, tmp_path / "merged")
    names, logits = _auto_load_in_fresh_process(merged, tmp_path / "logits.pt")
    assert names[-1] == "False"  # the adapter is folded into the LLM
    assert torch.allclose(logits, expected, atol=1e-4)


def test_the_task_prompt_travels_inside_the_checkpoint(tiny_model, tmp_path, monkeypatch):
    """A checkpoint answers with its own prompt text even where the package ships other prompt files."""
    checkpoint, _ = _lora_checkpoint(tiny_model, tmp_path)
    saved = json.loads((checkpoint / "processor_config.json").read_text())["task_prompt"]
    monkeypatch.setattr("affect_llm.prompts.prompts_root", lambda: tmp_path / "no-prompts-here")
    _, processor = load_checkpoint(checkpoint)
    assert processor.prompt.text == saved["text"] and processor.prompt.sha256 == saved["sha256"]


def test_an_edited_prompt_text_is_refused(tiny_model, tmp_path):
    checkpoint, _ = _lora_checkpoint(tiny_model, tmp_path)
    path = checkpoint / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["task_prompt"]["text"] += "\n# edited\n"
    path.write_text(json.dumps(saved))
    _, processor = load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        _ = processor.prompt


def test_token_budgets_come_from_the_model_config(tiny_model, tmp_path):
    checkpoint, _ = _lora_checkpoint(tiny_model, tmp_path)
    config = json.loads((checkpoint / "config.json").read_text())
    _, processor = load_checkpoint(checkpoint)
    assert processor.num_tokens == {"audio": config["num_audio_tokens"], "video": config["num_video_tokens"],
                                    "face": config["num_face_tokens"]}
    assert "num_tokens" not in json.loads((checkpoint / "processor_config.json").read_text())


def test_a_placeholder_id_that_disagrees_with_the_config_is_refused_on_load(tiny_model, tmp_path):
    checkpoint, _ = _lora_checkpoint(tiny_model, tmp_path)
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    config["face_token_id"] += 1
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"<\|face\|> is id .* but the model config says"):
        load_checkpoint(checkpoint)


def test_the_prompt_embedder_loads_only_the_embedding_table(tiny_model, tmp_path):
    """What vLLM needs beside the LLM gives the full model's prompt embeddings, with the LLM's layers unloaded."""
    checkpoint, _ = _lora_checkpoint(tiny_model, tmp_path)
    merged = merge_checkpoint(checkpoint, tmp_path / "merged")
    full, processor = load_checkpoint(merged)
    embedder, _ = load_prompt_embedder(merged)
    batch = _face_batch(processor)
    with torch.no_grad():
        expected = full.embed_inputs(batch["input_ids"], batch["media"])
        got = embedder.embed_inputs(batch["input_ids"], batch["media"])
    assert torch.equal(got, expected)
    layer_weights = [p for n, p in embedder.language_model.named_parameters() if ".layers." in n]
    assert layer_weights and all(p.is_meta for p in layer_weights)
