"""The composite model: forward/backward per modality mix, the merge, and generation."""

from __future__ import annotations

import pytest
import torch

from affect_llm.modeling.media import MediaInputs, ModalityInput
from affect_llm.modeling.model import merge_media_tokens

ANSWER = '{"labels": ["happy"]}'
MIXES = [("audio",), ("video",), ("face",), (), ("audio", "video", "face")]


@pytest.mark.parametrize("modalities", MIXES, ids=lambda m: "+".join(m) or "text")
def test_forward_backward_for_each_modality_mix(tiny_model, raw_media, modalities):
    model, processor = tiny_model
    messages = processor.build_messages("perceive", modalities, transcript="I am fine.")
    media = processor.prepare_media(**{m: raw_media[m] for m in modalities})
    batch = processor([messages], [media], answers=[ANSWER])
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for modality in modalities:
        grad = model.projectors[modality].proj.parameters().__next__().grad
        assert grad is not None and grad.abs().sum() > 0, f"{modality} projector got no gradient"


def test_absent_modality_gets_no_gradient(tiny_model, raw_media):
    model, processor = tiny_model
    batch = processor([processor.build_messages("perceive", ["audio"])], [processor.prepare_media(audio=raw_media["audio"])],
                      answers=[ANSWER])
    model(**batch).loss.backward()
    assert all(p.grad is None for p in model.projectors["face"].parameters())


def test_placeholder_count_mismatch_names_both_counts(tiny_model, raw_media):
    model, processor = tiny_model
    batch = processor([processor.build_messages("perceive", ["face"])], [processor.prepare_media(face=raw_media["face"])])
    face = batch["media"].face
    two_items = ModalityInput(values=torch.cat([face.values, face.values]))  # two items, one placeholder set
    batch["media"] = MediaInputs(face=two_items)
    with pytest.raises(ValueError, match=r"face: the prompt holds 2 placeholder tokens but the media give 4 tokens"):
        model(**batch)


def test_placeholders_without_media_raise(tiny_model):
    model, processor = tiny_model
    batch = processor([processor.build_messages("perceive", ["audio"])])
    with pytest.raises(ValueError, match="no audio input"):
        model(**batch)


def test_merge_places_tokens_in_order():
    embeds = torch.zeros(2, 4, 3)
    ids = torch.tensor([[1, 9, 9, 1], [9, 9, 1, 1]])
    tokens = torch.arange(12, dtype=torch.float).reshape(2, 2, 3)
    merged = merge_media_tokens(embeds, ids, 9, tokens, "audio")
    assert torch.equal(merged[0, 1], tokens[0, 0]) and torch.equal(merged[1, 1], tokens[1, 1])
    assert merged[0, 0].abs().sum() == 0


def test_cached_features_give_the_same_loss_as_raw_inputs(tiny_model, raw_media):
    model, processor = tiny_model
    model.eval()
    messages = processor.build_messages("perceive", ["audio", "face"])
    media = processor.prepare_media(audio=raw_media["audio"], face=raw_media["face"])
    batch = processor([messages], [media], answers=[ANSWER])
    with torch.no_grad():
        live = model(**batch).loss
        audio, face = batch["media"].audio, batch["media"].face
        feats, mask = model.get_media_features("audio", audio.values, audio.attention_mask)
        face_feats, face_mask = model.get_media_features("face", face.values)
        batch["media"] = MediaInputs(audio=ModalityInput(features=feats, feature_mask=mask),
                                     face=ModalityInput(features=face_feats, feature_mask=face_mask))
        cached = model(**batch).loss
    assert torch.allclose(live, cached)


def test_generate_returns_new_tokens_with_media(tiny_model, raw_media):
    model, processor = tiny_model
    batch = processor([processor.build_messages("perceive", ["video"])], [processor.prepare_media(video=raw_media["video"])])
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 4)
