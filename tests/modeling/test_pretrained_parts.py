"""Pretrained parts stay exactly as loaded once composed (post_init must not re-initialise them)."""

from __future__ import annotations

import pytest
import torch
from transformers import WhisperModel

from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec
from affect_llm.modeling.tiny import tiny_config


def test_whisper_with_a_short_window_keeps_its_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    whisper = WhisperModel(tiny_config("whisper"))
    whisper.save_pretrained(tmp_path / "whisper")
    model, _ = build_model(ModelSpec(audio_encoder=str(tmp_path / "whisper"), audio_window_seconds=2.0))
    saved = whisper.encoder.state_dict()
    loaded = model.encoders["audio"].state_dict()
    assert loaded["embed_positions.weight"].shape[0] == 100  # 2 s -> 100 encoder positions
    for key, value in loaded.items():
        expected = saved[key][: value.shape[0]] if key == "embed_positions.weight" else saved[key]
        assert torch.equal(value, expected), f"{key} changed when the composite model was built"


def test_whisper_loaded_in_bf16_keeps_one_dtype_after_its_window_is_shortened(tmp_path):
    """``explain --dtype bfloat16`` loads the encoders in bf16: the shortened position table must be
    bf16 too, or the first layer norm refuses the float32 hidden states it makes."""
    torch.manual_seed(0)
    WhisperModel(tiny_config("whisper")).save_pretrained(tmp_path / "whisper")
    model, processor = build_model(ModelSpec(audio_encoder=str(tmp_path / "whisper"), audio_window_seconds=2.0,
                                             dtype="bfloat16"))
    encoder = model.encoders["audio"]
    assert {param.dtype for param in encoder.parameters()} == {torch.bfloat16}
    media = processor.prepare_media(audio=torch.zeros(16000).numpy())
    features, _ = model.get_media_features("audio", media.audio.values, media.audio.attention_mask)
    assert features.dtype == torch.bfloat16 and features.shape == (1, 100, 32)


@pytest.mark.embedded
def test_embedded_parts_are_the_converted_weights():
    from safetensors.torch import load_file

    from affect_llm.references import resolve_model_path

    model, _ = build_model(ModelSpec(llm="smollm2-135m-instruct", audio_encoder="whisper-base",
                                     face_encoder="fer-mini-xception", audio_window_seconds=4.0))
    parts = {"whisper-base": (model.encoders["audio"], "model.encoder."),
             "fer-mini-xception": (model.encoders["face"], "")}
    for name, (module, prefix) in parts.items():
        folder = resolve_model_path(name)
        state = {}
        for file in sorted(__import__("pathlib").Path(folder).glob("*.safetensors")):
            state.update(load_file(str(file)))
        for key, value in module.state_dict().items():
            expected = state[prefix + key]
            if value.dim():
                expected = expected[: value.shape[0]]
            assert torch.equal(value, expected), f"{name}: {key} differs from the converted weights"


def test_audio_encoder_can_keep_only_its_first_layers(tmp_path):
    torch.manual_seed(0)
    whisper = WhisperModel(tiny_config("whisper"))
    whisper.save_pretrained(tmp_path / "whisper")
    model, processor = build_model(ModelSpec(audio_encoder=str(tmp_path / "whisper"), audio_window_seconds=2.0,
                                             audio_encoder_layers=1))
    assert len(model.encoders["audio"].layers) == 1
    assert torch.equal(model.encoders["audio"].layers[0].fc1.weight, whisper.encoder.layers[0].fc1.weight)
    media = processor.prepare_media(audio=torch.zeros(16000).numpy())
    features, mask = model.get_media_features("audio", media.audio.values, media.audio.attention_mask)
    assert features.shape == (1, 100, 32) and mask[0].sum() == 50


def test_audio_feature_layers_concatenate_the_chosen_hidden_states(tmp_path):
    """A learned mix of layers: the projector sees the states after layers 1 and 2, side by side."""
    torch.manual_seed(0)
    whisper = WhisperModel(tiny_config("whisper"))
    whisper.save_pretrained(tmp_path / "whisper")
    model, processor = build_model(ModelSpec(audio_encoder=str(tmp_path / "whisper"), audio_window_seconds=2.0,
                                             audio_feature_layers=[1, 2]))
    assert len(model.encoders["audio"].layers) == 2
    media = processor.prepare_media(audio=torch.zeros(16000).numpy())
    features, _ = model.get_media_features("audio", media.audio.values, media.audio.attention_mask)
    assert features.shape == (1, 100, 64)  # two layers of width 32
    states = model.encoders["audio"](input_features=media.audio.values, output_hidden_states=True).hidden_states
    assert torch.equal(features[..., :32], states[1]) and torch.equal(features[..., 32:], states[2])
    assert model.projectors["audio"].feature_mean.shape == (64,)


def test_feature_layers_beyond_the_kept_encoder_are_refused():
    with pytest.raises(ValueError, match="reach beyond audio_encoder_layers"):
        build_model(ModelSpec(audio_encoder="tiny:whisper", audio_encoder_layers=1, audio_feature_layers=[1, 2]))
