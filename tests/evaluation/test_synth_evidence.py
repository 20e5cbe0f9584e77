"""Evidence faithfulness on the synthetic set, and the overview page that shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affect_llm.data.synth.text import evidence_for, explanation_for, labels_for
from affect_llm.evaluation.overview import EvaluatedSet, write_overview
from affect_llm.evaluation.report import EvaluationError
from affect_llm.evaluation.synth_evidence import read_level, score_evidence
from affect_llm.hashing import file_sha256

NEUTRAL_CUES = {"audio": "neutral", "face": "neutral", "text": "neutral"}
CLIPS = {
    "a": ("audio", {**NEUTRAL_CUES, "audio": "sad"}),
    "f": ("face", {**NEUTRAL_CUES, "face": "happy"}),
    "c": ("conflict", {"audio": "angry", "face": "surprised", "text": "neutral"}),
}


def _refs() -> dict[str, dict]:
    return {cid: {"id": cid, "labels": labels_for(cues), "explanation": explanation_for(cues),
                  "extra": {"cue": cue, "cues": cues}} for cid, (cue, cues) in CLIPS.items()}


def _answer(cid: str, cues: dict[str, str]) -> dict:
    return {"id": cid, "labels": labels_for(cues) or ["neutral"], "explanation": explanation_for(cues),
            "evidence": evidence_for(cues, "The box is in the kitchen."), "parse_status": "ok"}


def test_read_level_maps_reference_phrases_back() -> None:
    assert read_level("face", "The face smiles with upturned mouth corners.") == "happy"
    assert read_level("audio", "The voice is low, slow and quiet.") == "sad"
    assert read_level("text", 'The words are neutral ("Lunch is at twelve.").') == "neutral"
    assert read_level("face", "A grin.") is None
    assert read_level("face", None) is None


def test_faithful_answers_score_one() -> None:
    scores = score_evidence([_answer(cid, cues) for cid, (_, cues) in CLIPS.items()], _refs())
    assert scores["cue_channel"] == {"audio": 1.0, "conflict": 1.0, "face": 1.0}
    assert scores["explanation"] == {"audio": 1.0, "conflict": 1.0, "face": 1.0}
    assert scores["channel"]["face"] == {"audio": 1.0, "video": 1.0, "text": 1.0}


def test_right_label_with_all_neutral_description_scores_zero() -> None:
    # The label is right but the answer calls every channel neutral: not an explanation.
    results = []
    for cid, (_, cues) in CLIPS.items():
        answer = _answer(cid, NEUTRAL_CUES)
        answer["labels"] = labels_for(cues)
        results.append(answer)
    scores = score_evidence(results, _refs())
    assert scores["cue_channel"] == {"audio": 0.0, "conflict": 0.0, "face": 0.0}
    assert scores["explanation"]["face"] == 0.0
    # The neutral channels of a single-cue clip are still described correctly.
    assert scores["channel"]["audio"] == {"audio": 0.0, "video": 1.0, "text": 1.0}


def test_rows_without_cues_and_failed_answers() -> None:
    refs = {**_refs(), "real": {"id": "real", "labels": ["happy"], "extra": {}}}
    failed = {"id": "f", "labels": None, "explanation": None, "evidence": None, "parse_status": "failed"}
    scores = score_evidence([failed, {"id": "real", "evidence": {}}], refs)
    assert scores["count"] == {"face": 1}
    assert scores["cue_channel"] == {"face": 0.0}


def _write_report(folder: Path, results: Path, refs: Path, **report: object) -> None:
    """A report.json as `affect-llm eval` records its inputs (the figures given here)."""
    inputs = {"results": {"sha256": file_sha256(results)}, "refs": {"sha256": file_sha256(refs)}}
    (folder / "report.json").write_text(json.dumps({"inputs": inputs, **report}))


@pytest.fixture
def evaluated(tmp_path: Path) -> EvaluatedSet:
    refs, results = tmp_path / "manifest.jsonl", tmp_path / "results.jsonl"
    refs.write_text("".join(json.dumps(r) + "\n" for r in _refs().values()))
    results.write_text("".join(json.dumps(_answer(cid, cues)) + "\n" for cid, (_, cues) in CLIPS.items()))
    report_dir = tmp_path / "eval"
    report_dir.mkdir()
    by_cue = {cue: {"count": 1, "accuracy": 1.0} for cue, _ in CLIPS.values()}
    _write_report(report_dir, results, refs, by_cue=by_cue, overall={"accuracy": 1.0},
                  coverage={"references": 3, "missing": 0})
    return EvaluatedSet("synthetic", results, refs, report_dir)


def test_overview_shows_evidence_table_and_writes_json(evaluated: EvaluatedSet, tmp_path: Path) -> None:
    page = write_overview(tmp_path / "report" / "index.md", evaluated)
    text = page.read_text()
    assert "## Do the answers describe the cues that are there?" in text
    assert "| face | 1 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in text
    saved = json.loads((tmp_path / "report" / "evidence.json").read_text())
    assert saved["cue_channel"]["conflict"] == 1.0


def test_absent_channel_evidence_is_right_only_when_left_out() -> None:
    cues = {"audio": None, "face": "happy", "text": None}
    refs = {"io": {"id": "io", "labels": ["happy"], "explanation": explanation_for(cues),
                   "extra": {"cue": "image_only", "cues": cues, "channels": ["video"]}}}  # fmt: skip
    faithful = {"id": "io", "evidence": evidence_for(cues, None), "explanation": explanation_for(cues)}
    invented = {**faithful, "evidence": {**faithful["evidence"], "audio": "The voice is even and moderate."}}
    said_missing = {**faithful, "evidence": {**faithful["evidence"], "audio": "No audio.", "text": "absent"}}
    for answer, audio_right in ((faithful, 1.0), (invented, 0.0), (said_missing, 1.0)):
        scores = score_evidence([answer], refs)
        assert scores["channel"]["image_only"]["audio"] == audio_right
        assert scores["cue_channel"]["image_only"] == 1.0 and scores["explanation"]["image_only"] == 1.0


def test_overview_lists_absent_channel_answers_and_real_sets(evaluated: EvaluatedSet, tmp_path: Path) -> None:
    photo = {"id": "p", "video": None, "audio": None, "image": "p.jpg", "transcript": None, "labels": ["happy"],
             "source": "pyfeat", "extra": {}}  # fmt: skip
    raw = json.dumps({"labels": ["happy"], "explanation": "A bright voice and a smile.", "evidence": {}})
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "refs.jsonl").write_text(json.dumps(photo) + "\n")
    (real_dir / "results.jsonl").write_text(json.dumps({"id": "p", "raw": raw, "labels": ["happy"]}) + "\n")
    _write_report(real_dir, real_dir / "results.jsonl", real_dir / "refs.jsonl", overall={"accuracy": 1.0},
                  coverage={"references": 1, "missing": 0})
    real = EvaluatedSet("photos", real_dir / "results.jsonl", real_dir / "refs.jsonl", real_dir)
    text = write_overview(tmp_path / "report" / "index.md", evaluated, [real]).read_text()
    assert "## Real recordings" in text and "### photos" in text
    assert "| pyfeat | 1 | 1 | 1.000 | 0 | 1 | 0 |" in text
    assert "| audio | 0 | 0 | 1 | 1 |" in text


def test_real_set_says_how_many_clips_were_read_per_speaker(evaluated: EvaluatedSet, tmp_path: Path) -> None:
    clip = {"id": "", "audio": "a.wav", "labels": ["angry"], "source": "polish", "extra": {"speaker": "m1"}}
    raw = json.dumps({"labels": ["angry"], "explanation": "The voice is loud.", "evidence": {}})
    real_dir = tmp_path / "speech"
    real_dir.mkdir()
    (real_dir / "refs.jsonl").write_text("".join(json.dumps({**clip, "id": i}) + "\n" for i in "abc"))
    (real_dir / "results.jsonl").write_text("".join(
        json.dumps({"id": i, "raw": raw, "labels": ["angry"], "audio_standardised_per_speaker": i != "c"}) + "\n"
        for i in "abc"))
    _write_report(real_dir, real_dir / "results.jsonl", real_dir / "refs.jsonl", overall={"accuracy": 1.0},
                  coverage={"references": 3, "missing": 0})
    real = EvaluatedSet("speech", real_dir / "results.jsonl", real_dir / "refs.jsonl", real_dir)
    text = write_overview(tmp_path / "report" / "index.md", evaluated, [real]).read_text()
    assert "own statistics (`model.audio_speaker_normalisation`) in 2 of 3 clips." in text


def test_the_page_says_what_is_missing_and_refuses_a_stale_report(evaluated: EvaluatedSet, tmp_path: Path) -> None:
    report = json.loads((evaluated.report_dir / "report.json").read_text())
    report["coverage"] = {"references": 20, "missing": 17}
    (evaluated.report_dir / "report.json").write_text(json.dumps(report))
    never_run = EvaluatedSet("speech", tmp_path / "none.jsonl", tmp_path / "manifest.jsonl", tmp_path / "no_eval")
    text = write_overview(tmp_path / "report" / "index.md", evaluated, [never_run]).read_text()
    assert "**17 of the 20 clips have no result row**" in text
    assert f"### speech\n\nNot evaluated: speech: {tmp_path / 'none.jsonl'} is missing" in text
    assert "## Do the answers describe channels the clip does not have?" in text
    # Results changed after the report was made: the page would mix two runs.
    with evaluated.results.open("a") as results:
        results.write("\n")
    with pytest.raises(EvaluationError, match="made from another .*results.jsonl than the one there now"):
        write_overview(tmp_path / "report" / "index.md", evaluated)
