"""Answers that describe a channel the clip does not have, read from the raw output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affect_llm.evaluation.absent_channels import (
    channels_of,
    check_answer,
    describing_words,
    score_absent_channels,
)
from affect_llm.evaluation.report import EvaluationError, evaluate

IMAGE_ONLY = {"id": "img", "video": None, "audio": None, "image": "a.jpg", "transcript": None,
              "labels": ["happy"], "source": "pyfeat", "extra": {}}  # fmt: skip
NO_AUDIO = {"id": "na", "video": "a.mp4", "audio": None, "image": "a.png", "transcript": "We won!",
            "labels": ["happy"], "source": "synth", "extra": {"cue": "no_audio", "channels": ["video", "text"]}}  # fmt: skip


def _answer(evidence: dict, explanation: str, rid: str = "img") -> dict:
    raw = json.dumps({"labels": ["happy"], "explanation": explanation, "evidence": evidence})
    return {"id": rid, "raw": raw, "labels": ["happy"], "parse_status": "ok"}


RIGHT = _answer(
    {"audio": None, "video": "The face smiles with upturned mouth corners.", "text": None},
    "The face smiles with upturned mouth corners, which suggests happiness. There is no audio and there is "
    "no transcript.",
)
IN_EVIDENCE = _answer(
    {"audio": "The voice is high-pitched, fast and loud.", "video": "The face smiles.", "text": None},
    "The face smiles, which suggests happiness.",
)
IN_EXPLANATION = _answer(
    {"audio": None, "video": "The face smiles.", "text": None},
    "The voice is even and moderate; the face smiles, which suggests happiness.",
)
SAYS_NO_AUDIO = _answer(
    {"audio": "No audio.", "video": "The face smiles.", "text": "none"},
    "No voice can be heard, and there are no spoken words; the smiling face suggests happiness.",
)


def test_presence_comes_from_extra_channels_else_media_fields() -> None:
    assert channels_of(NO_AUDIO) == ("video", "text")
    assert channels_of(IMAGE_ONLY) == ("video",)
    audio_only = {**IMAGE_ONLY, "image": None, "audio": "a.wav"}
    assert channels_of(audio_only) == ("audio",)


def test_right_answer_describes_no_absent_channel() -> None:
    check = check_answer(RIGHT, IMAGE_ONLY)
    assert check.absent == ("audio", "text") and check.describes_absent == []
    assert check.described == {"video": ["evidence", "explanation"]}


def test_absent_voice_described_in_evidence_only() -> None:
    check = check_answer(IN_EVIDENCE, IMAGE_ONLY)
    assert check.describes_absent == ["audio"] and check.described["audio"] == ["evidence"]


def test_absent_voice_described_in_explanation_only() -> None:
    check = check_answer(IN_EXPLANATION, IMAGE_ONLY)
    assert check.describes_absent == ["audio"] and check.described["audio"] == ["explanation"]
    assert check.words["audio"] == ["voice"]


def test_saying_the_channel_is_missing_is_not_describing_it() -> None:
    assert check_answer(SAYS_NO_AUDIO, IMAGE_ONLY).describes_absent == []


def test_raw_text_is_read_even_when_the_parsed_row_dropped_the_evidence() -> None:
    # A parser rejects a list-valued evidence field; the raw text still invents a voice.
    raw = '{"labels": ["happy"], "explanation": "A smile.", "evidence": {"audio": ["loud, fast voice"]}}'
    result = {"id": "img", "raw": raw, "labels": None, "evidence": None, "parse_status": "unparseable"}
    assert check_answer(result, IMAGE_ONLY).describes_absent == ["audio"]


def test_unparseable_raw_text_is_read_as_prose() -> None:
    truncated = {"id": "img", "raw": '{"labels": ["happy"], "explanation": "The voice rises and the face'}
    check = check_answer(truncated, IMAGE_ONLY)
    assert not check.parsed and check.describes_absent == ["audio"]
    silent = check_answer({"id": "img", "raw": "I cannot tell."}, IMAGE_ONLY)
    assert not silent.parsed and silent.describes_absent == []
    failed = check_answer({"id": "img", "raw": None}, IMAGE_ONLY)
    assert not failed.has_output and failed.describes_absent == []


def test_quoted_transcript_and_absence_clauses_are_not_descriptions() -> None:
    assert describing_words('The words are hostile ("Look at my face!"). No face is visible.') == {"text": ["words"]}
    assert describing_words("There is no audio; the brows are lowered.") == {"video": ["brows"]}


def test_scores_per_subset_and_channel() -> None:
    refs = {"img": IMAGE_ONLY, "na": NO_AUDIO}
    results = [IN_EVIDENCE, _answer({"audio": None, "video": "Smile.", "text": "Joy."}, "The pitch is high.", "na")]
    scores = score_absent_channels(results, refs)
    assert scores["overall"]["clips"] == 2 and scores["overall"]["describing_absent"] == 2
    assert scores["by_subset"]["pyfeat"]["in_evidence"] == 1
    assert scores["by_subset"]["no_audio"]["in_explanation"] == 1
    assert scores["by_subset"]["no_audio"]["examples"] == [{"id": "na", "channels": ["audio"], "words": {"audio": ["pitch"]}}]
    assert scores["overall"]["by_channel"]["audio"] == {"absent": 2, "described_absent": 2, "present": 0, "described_present": 0}
    assert scores["overall"]["by_channel"]["video"]["described_present"] == 2


def test_bad_channel_list_names_the_row() -> None:
    bad = {**NO_AUDIO, "extra": {"channels": ["voice"]}}
    with pytest.raises(ValueError, match="'na'.*extra.channels"):
        channels_of(bad)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _full_ref(ref: dict) -> dict:
    return {"explanation": None, "valence": None, "arousal": None, "split": "test", **ref}


def test_eval_report_counts_absent_channel_answers(tmp_path: Path) -> None:
    refs = _write(tmp_path / "refs.jsonl", [_full_ref(IMAGE_ONLY), _full_ref(NO_AUDIO)])
    results = _write(tmp_path / "results.jsonl", [IN_EXPLANATION, {**RIGHT, "id": "na"}])
    report = evaluate(results, refs, tmp_path / "eval")
    section = report["absent_channels"]
    assert section["by_subset"]["pyfeat"]["describing_absent"] == 1
    assert section["by_subset"]["no_audio"]["describing_absent"] == 0
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["absent_channels"]["overall"]["describing_absent"] == 1
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "## Answers describing an absent channel" in markdown
    assert "| pyfeat | 2 |" not in markdown and "| pyfeat | 1 | 1 | 1.0000 | 0 | 1 | 0 |" in markdown
    assert "`img` (audio: voice)" in markdown


def test_eval_rejects_a_bad_channel_list_naming_the_file(tmp_path: Path) -> None:
    refs = _write(tmp_path / "refs.jsonl", [_full_ref({**NO_AUDIO, "extra": {"channels": "video"}})])
    results = _write(tmp_path / "results.jsonl", [{**RIGHT, "id": "na"}])
    with pytest.raises(EvaluationError, match="refs.jsonl.*extra.channels"):
        evaluate(results, refs, tmp_path / "eval")


def test_reference_answers_of_every_synthetic_subset_describe_nothing_absent() -> None:
    # The scorer must not flag the references themselves: no false positives on their wording.
    from affect_llm.data.synth import plan_samples
    from affect_llm.data.synth.text import (
        EVIDENCE_KEYS,
        evidence_for,
        explanation_for,
        labels_for,
        present_channels,
    )

    specs = plan_samples(0, num_train=0, num_val=0, num_test_per_cue=8)
    refs, results = {}, []
    for spec in specs:
        channels = [EVIDENCE_KEYS[c] for c in present_channels(spec.cues)]
        refs[spec.id] = {"id": spec.id, "source": "synth", "extra": {"cue": spec.cue, "channels": channels}}
        answer = {"labels": labels_for(spec.cues), "explanation": explanation_for(spec.cues),
                  "evidence": evidence_for(spec.cues, spec.transcript)}  # fmt: skip
        results.append({"id": spec.id, "raw": json.dumps(answer)})
    scores = score_absent_channels(results, refs)
    assert scores["overall"]["clips"] == 6 * 8 and scores["overall"]["describing_absent"] == 0
    # ... while every present channel is described.
    for channel, counts in scores["overall"]["by_channel"].items():
        assert counts["described_present"] == counts["present"], channel
