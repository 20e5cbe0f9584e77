"""``face_features: expression_logits``: the face projector reads the FER encoder's class logits alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from affect_llm.data.manifest import load_manifest
from affect_llm.data.synth import generate_synthetic_set
from affect_llm.features.cache import FeatureCache
from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
from affect_llm.loading.build import build_model
from affect_llm.loading.checkpoint import load_checkpoint, save_checkpoint
from affect_llm.loading.spec import ModelSpec


def _face_pixels(model) -> torch.Tensor:
    face = model.config.face_config
    torch.manual_seed(0)
    return torch.rand(2, 3, face.num_channels, face.image_size, face.image_size)  # (N, K, C, H, W)


def test_the_face_features_are_the_encoders_expression_logits() -> None:
    model, _ = build_model(ModelSpec(face_encoder="tiny:fer", face_features="expression_logits"))
    pixels = _face_pixels(model)
    features, mask = model.get_media_features("face", pixels)
    num_labels = model.config.face_config.num_labels
    assert features.shape == (2, 3, num_labels) and mask.all()
    logits = model.encoders["face"](pixel_values=pixels.flatten(0, 1)).logits
    assert torch.equal(features, logits.reshape(2, 3, num_labels))
    projector = model.projectors["face"]
    # Standardised, but not layer-normalised across the few logits: their strengths are the signal.
    assert projector.feature_mean.shape == (num_labels,) and isinstance(projector.input_norm, nn.Identity)
    tokens = model.project_media_features("face", features, mask)
    assert tokens.shape == (2, model.config.num_face_tokens, model.config.text_config.hidden_size)


def test_pooled_face_features_stay_the_default() -> None:
    model, _ = build_model(ModelSpec(face_encoder="tiny:fer"))
    pixels = _face_pixels(model)
    features, _ = model.get_media_features("face", pixels)
    pooled = model.encoders["face"](pixel_values=pixels.flatten(0, 1)).pooler_output
    assert torch.equal(features, pooled.reshape(2, 3, -1))
    assert isinstance(model.projectors["face"].input_norm, nn.LayerNorm)


def test_expression_logits_need_an_expression_classifier() -> None:
    with pytest.raises(ValueError, match="classifies expressions"):
        build_model(ModelSpec(face_encoder="tiny:siglip", face_features="expression_logits"))
    with pytest.raises(ValueError, match="model.face_features='landmarks'"):
        ModelSpec(face_encoder="tiny:fer", face_features="landmarks")


def test_the_choice_travels_in_the_checkpoint(tmp_path) -> None:
    model, processor = build_model(ModelSpec(face_encoder="tiny:fer", face_features="expression_logits"))
    loaded, _ = load_checkpoint(save_checkpoint(model, processor, tmp_path / "ckpt"))
    assert loaded.config.face_features == "expression_logits"
    pixels = _face_pixels(model)
    with torch.no_grad():
        features, mask = model.get_media_features("face", pixels)
        again, _ = loaded.get_media_features("face", pixels)
        assert torch.equal(features, again)
        assert torch.allclose(model.project_media_features("face", features, mask),
                              loaded.project_media_features("face", again, mask))


def test_the_face_features_are_part_of_the_cache_key(tmp_path) -> None:
    # Same face weights, other features read: a cache filled with pooled features must not serve logits.
    manifest = generate_synthetic_set(tmp_path / "synth", seed=1, num_train=4, num_val=0, num_test_per_cue=0)
    row = next(r for r in load_manifest(manifest) if r.video)
    cache = FeatureCache(tmp_path / "cache")
    options = MediaOptions(num_frames=2)
    model, processor = build_model(ModelSpec(face_encoder="tiny:fer", num_face_tokens=2))
    pooled = MediaFeaturizer(model, processor, cache, options)([row])[row.id].get("face").features
    model.config.face_features = "expression_logits"
    logits = MediaFeaturizer(model, processor, cache, options)([row])[row.id].get("face").features
    num_labels = model.config.face_config.num_labels
    assert logits.shape[-1] == num_labels and pooled.shape[-1] > num_labels
    # The FER encoder's pooled output ends with the logits: the two reads agree where they overlap.
    assert torch.allclose(pooled[..., -num_labels:], logits)


def test_a_few_logits_move_the_projector_as_fast_as_a_pooled_output() -> None:
    from affect_llm.modeling.projectors import EXPRESSION_LOGITS_GAIN, MediaProjector

    logits_model, _ = build_model(ModelSpec(face_encoder="tiny:fer", face_features="expression_logits"))
    assert logits_model.projectors["face"].input_gain == EXPRESSION_LOGITS_GAIN
    assert build_model(ModelSpec(face_encoder="tiny:fer"))[0].projectors["face"].input_gain == 1.0

    # Same projector, same start, same Adam steps towards tokens much larger than it starts with
    # (as trained projectors end): with the gain, it gets there several times faster.
    torch.manual_seed(0)
    features = torch.randn(32, 2, 7)  # (N, T, 7) standardised logits
    mask = torch.ones(32, 2, dtype=torch.bool)
    # Tokens that depend on the features (a fixed linear map), ten times the size the projector starts at.
    target = (features.mean(1) @ torch.randn(7, 2 * 64)).reshape(32, 2, 64) * 10 / 7**0.5
    reached, losses = {}, {}
    for gain in (1.0, EXPRESSION_LOGITS_GAIN):
        torch.manual_seed(1)
        projector = MediaProjector("mlp", 7, 64, 2, normalize_items=False, input_gain=gain)
        for layer in projector.proj:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)  # as the model initialises projectors
        optimizer = torch.optim.Adam(projector.parameters(), lr=5e-3)
        for _ in range(30):
            loss = (projector(features, mask) - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        reached[gain] = float(projector(features, mask).norm(dim=-1).mean())
        losses[gain] = float(loss)
    assert reached[EXPRESSION_LOGITS_GAIN] > 2 * reached[1.0], reached
    assert losses[EXPRESSION_LOGITS_GAIN] < 0.75 * losses[1.0], losses
