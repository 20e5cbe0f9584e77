"""An explanation does not describe a channel the clip lacks, whatever the model prefers.

A scripted "model" stands in for the LLM's preferences (a random tiny LLM never writes JSON): each
answer the text so far begins proposes its next token, the first answer most strongly, so when a
guard forbids the first answer's token greedy decoding follows the next one. The guard, the logits
processor and the batch sampler are the real ones, on the tiny model's real tokenizer.
"""

from __future__ import annotations

import json

import pytest
import torch

from affect_llm.evaluation.absent_channels import check_answer
from affect_llm.generation.absent_evidence import AbsentChannelGuard, AbsentChannelLogitsProcessor, guards_for
from affect_llm.generation.absent_explanation import (
    ExplanationGuard,
    completion_token_ids,
    describing_token_ids,
    open_explanation,
)
from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.batch_stream import BatchItem, _guard, _Sampler
from affect_llm.labels.channel_words import describing_words, is_describing_word
from affect_llm.loading.build import build_model
from affect_llm.loading.spec import ModelSpec

AUDIO_ONLY_REF = {"id": "a", "extra": {"channels": ["audio"]}}


def answer(explanation: str) -> str:
    return json.dumps({"evidence": {"audio": "The voice is loud.", "video": None, "text": None},
                       "explanation": explanation, "labels": ["angry"]})


# The model's favourite clause describes a face the audio-only clip does not have.
INVENTED = answer("The voice is loud, which suggests anger; the face is neutral.")
FAITHFUL = answer("The voice is loud, which suggests anger; the tone is sharp. No face is visible.")


@pytest.fixture(scope="module")
def processor():
    return build_model(ModelSpec(), seed=0)[1]


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


def ranked_scores(tokenizer, answers: list[str], generated: list[int]) -> torch.Tensor:
    """Scores where each answer the text begins proposes its next token, earlier answers higher."""
    text = tokenizer.decode(generated, skip_special_tokens=True)
    scores = torch.zeros(len(tokenizer))
    proposed = 0
    for answer_text in answers:
        if answer_text.startswith(text) and len(answer_text) > len(text):
            token = tokenizer(answer_text[len(text):], add_special_tokens=False)["input_ids"][0]
            if scores[token] == 0:
                scores[token] = 10.0 - proposed
                proposed += 1
        elif answer_text == text:
            scores[tokenizer.eos_token_id] = max(float(scores[tokenizer.eos_token_id]), 10.0 - proposed)
            proposed += 1
    return scores


def decode_with(tokenizer, guard, answers: list[str]) -> str:
    processor = AbsentChannelLogitsProcessor([guard])
    prompt = [1, 2, 3]
    ids = list(prompt)
    for _ in range(300):
        scores = processor(torch.tensor([ids]), ranked_scores(tokenizer, answers, ids[len(prompt):])[None])
        token = int(scores[0].argmax())
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    return tokenizer.decode(ids[len(prompt):], skip_special_tokens=True)


def test_whole_word_tokens_of_each_channel_are_found(tokenizer) -> None:
    face = {tokenizer.decode([i]) for i in describing_token_ids(tokenizer, "video")}
    words = {tokenizer.decode([i]) for i in describing_token_ids(tokenizer, "text")}
    assert " face" in face and not any("word" in piece.lower() for piece in face)
    assert {" word", " words"} <= words


def test_a_missing_face_is_not_described_and_the_model_says_it_is_missing(tokenizer) -> None:
    guard = AbsentChannelGuard(tokenizer, ("video", "text"), explanation=True)
    text = decode_with(tokenizer, guard, [INVENTED, FAITHFUL])
    assert text == FAITHFUL
    assert check_answer({"id": "a", "raw": text}, AUDIO_ONLY_REF).describes_absent == []
    # Unguarded, the same preferences give the invented clause, and the evaluation counts it.
    free = decode_with(tokenizer, AbsentChannelGuard(tokenizer, ("video", "text"), explanation=False),
                       [INVENTED, FAITHFUL])
    assert free == INVENTED
    assert check_answer({"id": "a", "raw": free}, AUDIO_ONLY_REF).describes_absent == ["video"]


def test_present_channels_and_other_fields_stay_free(tokenizer) -> None:
    # The face is present here (only the words are missing): describing it is the model's choice.
    guard = AbsentChannelGuard(tokenizer, ("text",), explanation=True)
    assert decode_with(tokenizer, guard, [INVENTED, FAITHFUL]) == INVENTED
    # Outside the explanation (an evidence string, the labels) nothing is forbidden.
    outside = ExplanationGuard(tokenizer, ("video",))
    assert outside.banned('{"evidence": {"audio": "The') == []
    assert outside.banned('{"explanation": "The voice is loud.", "labels": ["') == []
    assert outside.banned('{"explanation": "The voice is loud; the') != []


@pytest.mark.parametrize("body", [
    "There is no", "no visible", "The voice is loud and there is no",  # a negation names what is missing
    'The words \\"what a',  # inside a quoted transcript
])
def test_a_missing_channel_may_be_named_after_a_negation_or_in_quotes(tokenizer, body: str) -> None:
    assert ExplanationGuard(tokenizer, ("video",)).banned('{"explanation": "' + body) == []


@pytest.mark.parametrize("body", ["The", "The voice is loud; the", "No anger here, the", 'The words \\"hi\\" and the'])
def test_elsewhere_in_the_explanation_a_missing_channel_is_not_described(tokenizer, body: str) -> None:
    banned = ExplanationGuard(tokenizer, ("video",)).banned('{"explanation": "' + body)
    assert set(banned) == set(describing_token_ids(tokenizer, "video"))


def test_a_describing_word_spelled_in_pieces_is_stopped_before_its_last_piece(tokenizer) -> None:
    """A GRPO policy wrote "and\ufffdlaughing" for a clip without audio, the word in pieces after a stray
    byte. Here the tokenizer spells " laughing" as " " + "la" + "u" + "gh" + "ing": the guard forbids
    the piece that would complete a describing word, and only where a word is being written."""
    assert tokenizer.tokenize(" laughing") == ["\u0120", "la", "u", "gh", "ing"]
    completions = completion_token_ids(tokenizer, describing_words("audio"))
    guard = ExplanationGuard(tokenizer, ("audio",))

    def banned(body: str) -> set[int]:
        return set(guard.banned('{"explanation": "The words are happy and' + body))

    (gh,) = tokenizer.convert_tokens_to_ids(["gh"])
    assert gh in banned(" lau") and gh in banned("\ufffdlau")  # "lau" + "gh" is "laugh"
    assert gh not in banned(" cou") and gh not in banned("lau")  # "cough"; "andlau" is no word's start
    # A whole unspaced describing word after a space token, punctuation or a stray byte.
    voice = set(completions["voice"])
    for body in (" ", "\ufffd", " ("):
        assert voice <= banned(body), body
    assert not voice & banned("")  # inside the word "and"
    # The lexicon spelled out is the lexicon.
    assert {"laugh", "laughing", "laughter", "voice", "voices"} <= set(describing_words("audio"))
    assert all(is_describing_word(word, channel) for channel in ("audio", "video", "text")
               for word in describing_words(channel))


def test_open_explanation_reads_escapes_and_ends(tokenizer) -> None:
    assert open_explanation('{"explanation": "A \\"quoted\\" word') == 'A \\"quoted\\" word'
    assert open_explanation('{"explanation": "Done.", "labels": []}') is None
    assert open_explanation('{"evidence": {"audio": "x') is None


def test_the_batch_sampler_holds_the_rule_per_request_settings(processor, tokenizer) -> None:
    audio_only = GenerationRequest(messages=[], absent=("video", "text"))
    for settings, expected in ((DecodingSettings(), FAITHFUL),
                               (DecodingSettings(guard_absent_explanation=False), INVENTED)):
        sampler = _Sampler(settings, _guard(processor, BatchItem(audio_only, settings, sink=None)))
        for _ in range(300):
            if sampler(ranked_scores(tokenizer, [INVENTED, FAITHFUL], sampler.generated)) == tokenizer.eos_token_id:
                break
        assert tokenizer.decode(sampler.generated[:-1], skip_special_tokens=True) == expected


def test_no_guard_when_both_rules_are_off(tokenizer) -> None:
    assert guards_for(tokenizer, [("audio",)], null_evidence=False, explanation=False) == [None]
    assert guards_for(tokenizer, [()], null_evidence=True, explanation=True) == [None]
