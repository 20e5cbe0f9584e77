from __future__ import annotations

import pytest

from affect_llm.labels.parse import parse_answer


def test_valid_answer_lowercases_and_strips():
    result = parse_answer(
        '{"labels": [" Happy ", "EXCITED"], "explanation": "smiles", '
        '"evidence": {"audio": "bright voice", "video": null}}'
    )
    assert result.ok
    assert result.answer.labels == ["happy", "excited"]
    assert result.answer.evidence == {"audio": "bright voice", "video": None, "text": None}
    assert result.answer.to_dict()["explanation"] == "smiles"


def test_chatty_prefix_suffix_and_fences_are_tolerated():
    text = 'Sure! Here it is:\n```json\n{"labels": ["sad"]}\n```\nHope this helps {not json'
    result = parse_answer(text)
    assert result.ok and result.answer.labels == ["sad"]
    assert result.raw == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('{"labels": ["sad", "ang', "truncated"),
        ("I think they are sad.", "no JSON"),
        ('{"labels": ["sad"],, }', "malformed"),
        ('{"explanation": "x"}', "missing"),
        ('{"labels": "sad"}', "list of strings"),
        ('{"labels": [1, 2]}', "list of strings"),
        ('{"labels": ["sad"], "evidence": "loud"}', "evidence"),
    ],
)
def test_bad_answers_report_reason_and_no_label(text, reason):
    result = parse_answer(text)
    assert not result.ok
    assert result.answer is None
    assert reason in result.error


def test_none_input_is_empty_error():
    assert parse_answer(None).error == "empty output"


def test_align_answer_without_labels_is_allowed_when_not_required():
    result = parse_answer(
        '{"evidence": {"audio": null, "video": "smile", "text": null}}', require_labels=False
    )
    assert result.ok and result.answer.labels == []
