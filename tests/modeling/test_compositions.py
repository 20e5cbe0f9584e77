"""Other encoder families, the HF save/load round trip, and QLoRA on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.tiny import tiny_config
from affect_llm.modeling.trainable import LoraSettings, apply_lora, set_trainable

ANSWER = '{"labels": ["calm"]}'


def test_wav2vec2_audio_and_clip_video_train():
    model, processor = build_model(ModelSpec(audio_encoder="tiny:wav2vec2", video_encoder="tiny:clip",
                                             audio_projector="attention", audio_window_seconds=1.0))
    assert processor.feature_extractor.audio_input == "waveform"
    media = processor.prepare_media(audio=np.random.default_rng(0).standard_normal(12_000).astype(np.float32),
                                    video=np.zeros((2, 40, 40, 3), np.uint8))
    batch = processor([processor.build_messages("perceive", ["audio", "video"])], [media], answers=[ANSWER])
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.projectors["video"].proj[0].weight.grad is not None


def test_save_pretrained_and_from_pretrained_round_trip(tmp_path):
    model, processor = build_model(ModelSpec(audio_encoder="tiny:whisper", face_encoder="tiny:fer",
                                             audio_window_seconds=1.0))
    model.save_pretrained(tmp_path)
    again = AffectForConditionalGeneration.from_pretrained(tmp_path)
    batch = processor([processor.build_messages("perceive", ["audio"])],
                      [processor.prepare_media(audio=np.zeros(8000, np.float32))])
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, again(**batch).logits, atol=1e-6)


def test_qlora_loads_the_llm_in_4bit_and_trains_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    config = tiny_config("llm", vocab_size=640)
    config.hidden_size, config.intermediate_size = 64, 128  # bitsandbytes packs 4-bit weights in blocks of 64
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llm")
    from affect_llm.modeling.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "llm")
    model, processor = build_model(ModelSpec(llm=str(tmp_path / "llm"), face_encoder="tiny:fer", quantization="4bit"))
    assert model.language_model.is_loaded_in_4bit
    assert all(p.dtype == torch.float32 for p in model.projectors.parameters())
    apply_lora(model, LoraSettings(r=4))
    set_trainable(model, ["projectors", "lora"])
    media = processor.prepare_media(face=np.zeros((2, 48, 48, 3), np.uint8))
    batch = processor([processor.build_messages("perceive", ["face"])], [media], answers=[ANSWER])
    model(**batch).loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    with pytest.raises(ValueError, match="4-bit"):
        set_trainable(model, ["llm"])
