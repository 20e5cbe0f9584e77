"""Which channels a clip's features carry: a clip in which no frame shows a face has no face channel."""

from __future__ import annotations

import json

import pytest
import torch

from affect_llm.data.manifest import load_manifest
from affect_llm.data.synth import generate_synthetic_set
from affect_llm.features.featurize import MediaFeaturizer, MediaOptions, face_detected
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec
from affect_llm.modeling.media import ModalityInput


@pytest.fixture(scope="module")
def synth_rows(tmp_path_factory: pytest.TempPathFactory) -> dict:
    manifest = generate_synthetic_set(tmp_path_factory.mktemp("synth"), seed=0, num_train=60, num_val=0,
                                      num_test_per_cue=0)
    rows = {}
    for row in load_manifest(manifest):
        rows.setdefault(row.extra["cue"], row)
    return rows


@pytest.fixture(scope="module")
def featurizer() -> MediaFeaturizer:
    model, processor = build_model(ModelSpec(audio_encoder="tiny:whisper", face_encoder="tiny:fer",
                                             audio_window_seconds=4.0, num_audio_tokens=2, num_face_tokens=2))
    return MediaFeaturizer(model, processor, options=MediaOptions(num_frames=2))


@pytest.mark.parametrize(("cue", "expected"), [
    ("all", ("audio", "face")),
    ("no_face", ("audio",)),
    ("no_audio", ("face",)),
    ("image_only", ("face",)),
    ("audio_only", ("audio",)),
])
def test_features_carry_the_channels_the_clip_has(synth_rows, featurizer, cue, expected):
    row = synth_rows[cue]
    media = featurizer([row])[row.id]
    assert media.modalities == expected, (cue, json.dumps(row.extra.get("channels")))


def test_face_detected_reads_per_frame_records():
    assert face_detected({"face_found": [False, True]})
    assert not face_detected({"face_found": [False, False]})
    assert face_detected({"faces": [{"method": "centre"}, {"method": "blazeface"}]})
    assert not face_detected({"faces": [{"method": "centre"}]})
    assert not face_detected({})


def test_the_face_rule_is_part_of_the_cache_key(featurizer):
    assert featurizer.settings["face_channel"] == "needs_a_detected_face"


def test_text_only_rows_have_no_media(synth_rows, featurizer):
    row = synth_rows["text_only"]
    assert featurizer([row])[row.id].modalities == ()



def test_a_still_image_batched_with_clips_keeps_only_its_own_frame(synth_rows, featurizer):
    """A still image has one frame; batched with 2-frame clips it is padded to 2, and the padding's
    features must neither be kept nor differ from the image encoded alone."""
    image, clip = synth_rows["image_only"], synth_rows["all"]
    alone = featurizer([image])[image.id].face
    together = featurizer([clip, image, clip])
    batched = together[image.id].face
    assert alone.features.shape[1] == 1 and batched.features.shape == alone.features.shape
    assert torch.allclose(batched.features, alone.features, atol=1e-5)
    assert together[clip.id].face.features.shape[1] == 2  # the clips keep both frames


def test_concatenated_frames_mark_the_padding_of_shorter_items():
    still = ModalityInput(values=torch.ones(1, 1, 1, 8, 8))
    clip = ModalityInput(values=torch.ones(2, 3, 1, 8, 8))
    batch = ModalityInput.concat([clip, still])
    assert batch.values.shape == (3, 3, 1, 8, 8)
    assert batch.attention_mask.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    # Equal frame counts need no mask; a batch of batches keeps the marks it has.
    assert ModalityInput.concat([clip, clip]).attention_mask is None
    again = ModalityInput.concat([batch, ModalityInput(values=torch.ones(1, 2, 1, 8, 8))])
    assert again.attention_mask.tolist()[2:] == [[True, False, False], [True, True, False]]


def test_warnings_of_a_cached_clip_are_those_of_its_first_decoding(synth_rows, featurizer, tmp_path):
    """A rerun that reads the feature cache notes what the media checks noted when the clip was decoded,
    located at the row's manifest line."""
    from affect_llm.features.cache import FeatureCache

    row = synth_rows["no_face"]
    runs = []
    for _ in range(2):
        cached = MediaFeaturizer(featurizer.model, featurizer.processor, FeatureCache(tmp_path / "cache"),
                                 MediaOptions(num_frames=2))
        assert row.id in cached([row])
        runs.append(cached.warnings.get(row.id))
    assert cached.cache.hits > 0 and cached.encoded_items == 0  # the second run read the cache
    assert runs[0] and runs[1] == runs[0], runs
    assert {(w["line"], w["id"]) for w in runs[0]} == {(row.line, row.id)} and row.line > 0
