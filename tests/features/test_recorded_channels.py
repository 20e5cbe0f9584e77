"""A row's recorded channels (``extra.channels``) decide what is encoded: a sound track the dataset says
holds no voice is not given to the model, and a malformed list is refused naming the row and field."""

from __future__ import annotations

from dataclasses import replace

import pytest

from affect_llm.data.manifest import load_manifest
from affect_llm.data.synth import generate_synthetic_set
from affect_llm.features.cache import FeatureCache
from affect_llm.features.decode import row_content_hash
from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec


@pytest.fixture(scope="module")
def full_row(tmp_path_factory: pytest.TempPathFactory):
    manifest = generate_synthetic_set(tmp_path_factory.mktemp("synth"), seed=1, num_train=4, num_val=0,
                                      num_test_per_cue=0)
    row = next(r for r in load_manifest(manifest) if r.channels == ("audio", "video", "text"))
    assert row.audio and row.video  # a voice file and a face video
    return row


@pytest.fixture(scope="module")
def featurize():
    model, processor = build_model(ModelSpec(audio_encoder="tiny:whisper", face_encoder="tiny:fer",
                                             audio_window_seconds=4.0, num_audio_tokens=2, num_face_tokens=2))

    def run(rows, cache: FeatureCache | None = None) -> MediaFeaturizer:
        featurizer = MediaFeaturizer(model, processor, cache, MediaOptions(num_frames=2), batch_size=4)
        featurizer.features = featurizer(rows)
        return featurizer

    return run


def with_channels(row, row_id: str, channels):
    return replace(row, id=row_id, extra={**row.extra, "channels": channels})


def test_a_channel_the_row_does_not_record_is_not_encoded(full_row, featurize, tmp_path) -> None:
    rows = [full_row, with_channels(full_row, "face-only", ["video", "text"]),
            with_channels(full_row, "voice-only", ["audio"])]
    cache = FeatureCache(tmp_path / "cache")
    done = featurize(rows, cache)
    assert done.features[full_row.id].modalities == ("audio", "face")
    assert done.features["face-only"].modalities == ("face",)  # the sound track is not a voice here
    assert done.features["voice-only"].modalities == ("audio",)
    again = featurize(rows, cache)  # read back from the cache: the same channels
    assert {i: m.modalities for i, m in again.features.items()} == {i: m.modalities for i, m in done.features.items()}


def test_the_recorded_channels_are_part_of_the_cache_key(full_row) -> None:
    assert row_content_hash(full_row) != row_content_hash(with_channels(full_row, full_row.id, ["video"]))


def test_a_malformed_channel_list_fails_that_row_naming_the_field(full_row, featurize) -> None:
    done = featurize([full_row, with_channels(full_row, "bad", ["voice"])])
    assert list(done.features) == [full_row.id]
    assert "'bad'" in done.failures["bad"] and "extra.channels" in done.failures["bad"]


def test_words_the_row_does_not_record_are_not_given_to_the_model(full_row, featurize) -> None:
    """A transcript kept for reference beside ``channels`` without ``text``: the prompt has no words and
    the evidence of ``text`` is held to null, as the evaluation holds the answer to the recorded channels."""
    from affect_llm.generation.explain import BatchExplainer

    voice_only = with_channels(full_row, "voice-only", ["audio"])
    assert full_row.transcript and voice_only.transcript == full_row.transcript
    assert full_row.words == full_row.transcript and voice_only.words is None
    done = featurize([full_row, voice_only])
    explainer = BatchExplainer(backend=None, featurizer=done, processor=done.processor, identity={})
    full, voice = explainer._requests([full_row, voice_only], done.features, "reason")
    prompt = lambda request: " ".join(m["content"] for m in request.messages)  # noqa: E731
    assert full_row.transcript in prompt(full) and full.absent == ()
    assert full_row.transcript not in prompt(voice) and voice.absent == ("video", "text")
