"""The processor: placeholder expansion, label masking, padding, collation and persistence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec
from affect_llm.processing.processor import IGNORE_INDEX, AffectProcessor

ANSWER = '{"labels": ["sad"]}'


SPEC = ModelSpec(audio_encoder="tiny:whisper", face_encoder="tiny:fer", num_audio_tokens=5, num_face_tokens=3,
                 audio_window_seconds=1.0)


def _processor() -> AffectProcessor:
    return build_model(SPEC)[1]


def test_each_placeholder_expands_to_its_token_budget():
    processor = _processor()
    ids = processor.encode_text(processor.build_messages("perceive", ["audio", "face"]))["input_ids"]
    token_ids = processor.token_ids()
    assert ids.count(token_ids["audio"]) == 5
    assert ids.count(token_ids["face"]) == 3


def test_labels_cover_the_answer_only():
    processor = _processor()
    messages = processor.build_messages("perceive", ["audio"], transcript="hello")
    item = processor.encode_text(messages, ANSWER)
    prompt_len = len(processor.encode_text(messages)["input_ids"])
    assert all(label == IGNORE_INDEX for label in item["labels"][:prompt_len])
    answer_text = processor.tokenizer.decode([t for t in item["labels"] if t != IGNORE_INDEX])
    assert answer_text.startswith(ANSWER)


def test_generation_batches_pad_left_training_batches_pad_right():
    processor = _processor()
    short = processor.build_messages("perceive", [])
    long = processor.build_messages("perceive", ["audio"], transcript="a much longer transcript here")
    left = processor([short, long])
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    right = processor([short, long], answers=[ANSWER, ANSWER])
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0


def test_collate_stacks_media_of_items_that_have_it():
    processor = _processor()
    audio = processor.prepare_media(audio=torch.zeros(8000).numpy())
    batch = processor([processor.build_messages("perceive", ["audio"]), processor.build_messages("perceive", [])],
                      [audio, None])
    assert batch["media"].audio.num_items == 1
    assert batch["media"].modalities == ("audio",)


def test_save_and_reload_round_trip(tmp_path):
    model, processor = build_model(SPEC)
    model.config.save_pretrained(tmp_path)  # the budgets' one source
    processor.save_pretrained(tmp_path)
    again = AffectProcessor.from_pretrained(tmp_path)
    messages = processor.build_messages("reason", ["audio", "face"], transcript="hi")
    assert again.encode_text(messages, ANSWER) == processor.encode_text(messages, ANSWER)
    assert again.prompt.ref == processor.prompt.ref


def test_the_prompt_states_which_channels_the_clip_has_and_lacks():
    processor = _processor()
    audio_only = processor.build_messages("reason", ["audio"])[1]["content"]
    assert "Has: voice. Missing: face, words." in audio_only
    everything = processor.build_messages("reason", ["audio", "face"], transcript="hi")[1]["content"]
    assert "Has: voice, face, words." in everything and "Missing" not in everything


def test_recognised_words_are_marked_as_recognised():
    processor = _processor()
    text = processor.build_messages("perceive", ["audio"], transcript="nie", transcript_recognised=True)[1]["content"]
    assert 'Words (recognised from the speech): "nie"' in text


def test_a_prompt_version_without_channels_states_none(tmp_path):
    from affect_llm.prompts import load_prompt

    model, processor = build_model(ModelSpec(audio_encoder="tiny:whisper", audio_window_seconds=1.0),
                                   prompt_version="v3")
    assert processor.prompt.ref == load_prompt("tasks", "v3").ref
    assert "Has:" not in processor.build_messages("reason", ["audio"])[1]["content"]


def test_a_prompt_file_that_is_not_yaml_is_named_with_its_line(tmp_path: Path) -> None:
    from affect_llm.prompts import load_prompt

    broken = tmp_path / "tasks" / "v1.yaml"
    broken.parent.mkdir()
    broken.write_text("system: [unclosed\n")
    with pytest.raises(ValueError, match=rf"prompt file {broken}: not valid YAML at line 2, column 1"):
        load_prompt("tasks", "v1", root=tmp_path)
