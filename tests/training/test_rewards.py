"""Rewards of the reinforcement stage on fixed answers: right, partly right, unparseable, inventing a channel."""

from __future__ import annotations

import json

import pytest

from affect_llm.data.manifest import ManifestRow
from affect_llm.training.rewards import check_reward_weights, check_rewards_apply, score_answer

ALL = {"format": 1.0, "labels": 1.0, "evidence": 1.0}

# A synthetic voice-cue clip: the voice is happy, face and words neutral.
VOICE_CUE = ManifestRow(
    id="v", video="v.mp4", audio="v.wav", transcript="The file is on the desk.", labels=["happy"],
    extra={"cue": "audio", "channels": ["audio", "video", "text"],
           "cues": {"audio": "happy", "face": "neutral", "text": "neutral"}},
)
# An audio-only clip: no face, no words.
AUDIO_ONLY = ManifestRow(
    id="a", audio="a.wav", labels=["surprised"],
    extra={"cue": "audio_only", "channels": ["audio"], "cues": {"audio": "surprised", "face": None, "text": None}},
)
# A real recording with labels only (no cue levels recorded), audio only.
REAL_AUDIO = ManifestRow(id="p", audio="p.wav", labels=["angry"], extra={"channels": ["audio"]})


def _answer(labels, explanation, audio, video, text) -> str:
    return json.dumps({"labels": labels, "explanation": explanation,
                       "evidence": {"audio": audio, "video": video, "text": text}})


RIGHT = _answer(["happy"], "The voice is high-pitched, fast and loud, which suggests happiness.",
                "The voice is high-pitched, fast and loud.", "The face is neutral.",
                'The words are neutral ("The file is on the desk.").')


def test_a_right_answer_gets_every_reward():
    scores = score_answer(RIGHT, VOICE_CUE, ALL)
    assert scores == {"format": 1.0, "labels": 1.0, "evidence": 1.0, "total": 1.0}


def test_a_partly_right_answer_gets_part_of_the_rewards():
    """Right label, but the voice described as neutral: evidence 2 of 3 channels right."""
    answer = _answer(["happy", "sad"], "The voice is even, the words neutral.", "The voice is even and moderate.",
                     "The face is neutral.", 'The words are neutral ("The file is on the desk.").')
    scores = score_answer(answer, VOICE_CUE, ALL)
    assert scores["format"] == 1.0
    assert scores["labels"] == pytest.approx(2 / 3)  # precision 1/2, recall 1: F1 2/3
    assert scores["evidence"] == pytest.approx(2 / 3)
    assert scores["total"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_an_unparseable_answer_gets_nothing_but_is_not_coerced():
    scores = score_answer('{"labels": ["happy", ', VOICE_CUE, ALL)
    assert scores == {"format": 0.0, "labels": 0.0, "evidence": 0.0, "total": 0.0}


def test_describing_an_absent_face_in_the_evidence_scores_zero_evidence():
    answer = _answer(["surprised"], "The voice rises in pitch, which suggests surprise.",
                     "The voice is very high and rises in pitch.", "The face is neutral.", None)
    assert score_answer(answer, AUDIO_ONLY, ALL)["evidence"] == 0.0


def test_describing_an_absent_face_in_the_explanation_only_scores_zero_evidence():
    answer = _answer(["surprised"], "The voice rises and the face has raised brows.",
                     "The voice is very high and rises in pitch.", None, None)
    assert score_answer(answer, AUDIO_ONLY, ALL)["evidence"] == 0.0


def test_saying_the_missing_channels_are_missing_is_rewarded():
    answer = _answer(["surprised"], "The voice is very high and rises in pitch, which suggests surprise. "
                     "No face is visible and there is no transcript.",
                     "The voice is very high and rises in pitch.", None, None)
    assert score_answer(answer, AUDIO_ONLY, ALL) == {"format": 1.0, "labels": 1.0, "evidence": 1.0, "total": 1.0}


def test_a_real_clip_without_cue_levels_is_checked_for_missing_channels_only():
    faithful = _answer(["angry"], "The voice is loud and harsh.", "The voice is loud and harsh.", None, None)
    invented = _answer(["angry"], "The voice is loud and the face frowns.", "The voice is loud.",
                       "The face frowns.", None)
    assert score_answer(faithful, REAL_AUDIO, ALL)["evidence"] == 1.0
    assert score_answer(invented, REAL_AUDIO, ALL)["evidence"] == 0.0


def test_a_reward_with_nothing_to_check_is_left_out_of_the_total():
    row = ManifestRow(id="m", video="m.mp4", transcript="hi", labels=["calm"])  # all channels, no cue levels
    answer = _answer(["calm"], "Calm.", "x", "y", "z")
    scores = score_answer(answer, row, ALL)
    assert scores["evidence"] is None and scores["total"] == 1.0


def test_length_reward_falls_off_past_the_limit():
    from affect_llm.training.rewards import LENGTH_MAX_CHARS

    assert score_answer("x" * LENGTH_MAX_CHARS, REAL_AUDIO, {"length": 1.0})["length"] == 1.0
    assert score_answer("x" * (LENGTH_MAX_CHARS * 3 // 2), REAL_AUDIO, {"length": 1.0})["length"] == 0.5


def test_unknown_reward_names_are_refused():
    with pytest.raises(ValueError, match=r"unknown rewards \['style'\]"):
        check_reward_weights({"style": 1.0}, "stage 'rl'")


def test_format_asks_for_every_key_of_the_task():
    """A reason answer without its explanation and evidence is not well-formed, however right its label."""
    labels_only = json.dumps({"labels": ["angry"]})
    reason = score_answer(labels_only, REAL_AUDIO, ALL)
    assert reason["format"] == 0.0 and reason["labels"] == 1.0 and reason["total"] < 1.0
    blank = _answer(["angry"], "  ", "The voice is loud.", None, None)
    assert score_answer(blank, REAL_AUDIO, ALL)["format"] == 0.0


def test_rewards_of_keys_a_task_does_not_ask_for_do_not_apply():
    perceive = score_answer(json.dumps({"labels": ["happy"]}), VOICE_CUE, ALL, keys=("labels",))
    assert perceive == {"format": 1.0, "labels": 1.0, "evidence": None, "total": 1.0}
    evidence_only = json.dumps({"evidence": {"audio": "The voice is high-pitched, fast and loud.",
                                             "video": "The face is neutral.", "text": "The words are neutral."}})
    evidence = score_answer(evidence_only, VOICE_CUE, ALL, keys=("evidence",))
    assert evidence["labels"] is None and evidence["format"] == 1.0 and evidence["total"] == evidence["evidence"]


def test_a_stage_whose_rewards_judge_none_of_its_tasks_is_refused():
    check_rewards_apply({"labels": 1.0}, ("labels",), "stage 'rl'", "perceive")
    check_rewards_apply({"format": 1.0}, ("evidence",), "stage 'rl'", "evidence")
    with pytest.raises(ValueError, match="no reward in \\['labels'\\] judges task 'evidence'"):
        check_rewards_apply({"labels": 1.0}, ("evidence",), "stage 'rl'", "evidence")
