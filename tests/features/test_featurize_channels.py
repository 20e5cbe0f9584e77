"""Which channels a clip's features carry: a clip in which no frame shows a face has no face channel."""

from __future__ import annotations

import json

import pytest

from affect_llm.data.manifest import load_manifest
from affect_llm.data.synth import generate_synthetic_set
from affect_llm.features.featurize import MediaFeaturizer, MediaOptions, face_detected
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec


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

