from __future__ import annotations

import json
from pathlib import Path

import pytest
from datahelpers import row, write_jsonl

from affect_llm.data.manifest import (
    ManifestError,
    ManifestReader,
    ManifestRow,
    load_manifest,
    write_manifest,
)
from affect_llm.hashing import file_sha256


def test_round_trip_preserves_rows_and_resolves_media_against_manifest(tmp_path: Path) -> None:
    rows = [ManifestRow(id="a", audio="clips/a.wav", labels=["happy", "relieved"], valence=0.5, source="t")]
    path = write_manifest(rows, tmp_path / "sub" / "m.jsonl")
    loaded = load_manifest(path)
    assert loaded == rows
    assert loaded[0].line == 1
    assert loaded[0].media_path("audio") == tmp_path / "sub" / "clips" / "a.wav"
    assert loaded[0].media_path("video") is None


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ({"labels": "happy"}, "labels", "expected a list of strings"),
        ({"valence": "high"}, "valence", "expected a number"),
        ({"speaker": "x"}, "speaker", "unknown key"),
        ({"split": ""}, "split", "empty string"),
        ({"id": 7}, "id", "expected a non-empty string"),
    ],
)
def test_schema_errors_name_file_line_and_field(tmp_path: Path, bad: dict, field: str, reason: str) -> None:
    path = write_jsonl(tmp_path / "manifest.jsonl", [row("ok"), row("bad", **bad)])
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.line == 2 and info.value.field == field
    assert str(info.value).startswith(f"manifest.jsonl:2: field '{field}': ")
    assert reason in str(info.value)


def test_keys_other_than_id_take_their_defaults(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "video": "a.mp4", "labels": ["happy"]}])
    (loaded,) = load_manifest(path)
    assert loaded == ManifestRow(id="a", video="a.mp4", labels=["happy"])
    # A row without a split has none: nothing takes it into a training split by default.
    assert loaded.split is None and loaded.source is None and loaded.transcript is None


def test_a_transcript_of_only_spaces_is_a_row_without_words(tmp_path: Path) -> None:
    """Spaces are no words: the prompt must say the clip has none, not hand the model blanks to describe."""
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "audio": "a.wav", "transcript": " \t \n"},
                                              {"id": "b", "audio": "b.wav", "transcript": " I am here "}])
    blank, spoken = load_manifest(path)
    assert blank.transcript == "" and not blank.words
    assert spoken.transcript == " I am here "


def test_missing_id_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"video": "a.mp4"}])
    with pytest.raises(ManifestError, match=r"m.jsonl:1: field 'id': missing required key"):
        load_manifest(path)


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [row("a"), row("b"), row("a")])
    with pytest.raises(ManifestError, match=r"m.jsonl:3: field 'id': duplicate id 'a' \(first on line 1"):
        load_manifest(path)


def test_reader_records_each_refused_line_and_keeps_the_first_of_an_id(tmp_path: Path) -> None:
    lines = [row("a"), b"{not json", row("b", labels="sad"), row("a", split="test"), {"video": "x.mp4"},
             json.dumps(row("c", transcript="caf@")).encode().replace(b"@", b"\xe9"), row("d")]
    reader = ManifestReader(write_jsonl(tmp_path / "m.jsonl", lines))
    rows = list(reader)
    assert [(r.id, r.line, r.split) for r in rows] == [("a", 1, "train"), ("d", 7, "train")]
    found = [(i.line, i.id, i.field, i.code) for i in reader.issues]
    assert found == [(2, None, None, "manifest"), (3, "b", "labels", "manifest"), (4, "a", "id", "duplicate_id"),
                     (5, None, "id", "manifest"), (6, "c", "transcript", "manifest")]
    assert reader.num_lines == 7 and all(i.is_error for i in reader.issues)


def test_one_bad_line_in_many_costs_that_line(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    good = json.dumps({"id": "x", "transcript": "t", "split": "train"})
    with path.open("w") as handle:
        for index in range(20_000):
            handle.write("{oops\n" if index == 12_345 else good.replace('"x"', f'"r{index}"') + "\n")
    reader = ManifestReader(path)
    assert sum(1 for _ in reader) == 19_999
    assert [(i.line, i.code) for i in reader.issues] == [(12_346, "manifest")]


def test_invalid_json_and_utf8_report_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [row("a"), b"{not json"])
    with pytest.raises(ManifestError, match=r"m.jsonl:2: invalid JSON"):
        load_manifest(path)
    path = write_jsonl(
        tmp_path / "u.jsonl", [json.dumps(row("a")).replace("null", '"\xff"', 1).encode("latin-1")]
    )
    with pytest.raises(ManifestError, match=r"u.jsonl:1: field 'video': not valid UTF-8"):
        load_manifest(path)


def test_write_is_atomic_and_rejects_duplicates(tmp_path: Path) -> None:
    path = write_manifest([ManifestRow(id="a", source="t")], tmp_path / "m.jsonl")
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="duplicate id"):
        write_manifest([ManifestRow(id="b", source="t"), ManifestRow(id="b", source="t")], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_sha256_changes_with_content(tmp_path: Path) -> None:
    a = write_manifest([ManifestRow(id="a", source="t")], tmp_path / "a.jsonl")
    b = write_manifest([ManifestRow(id="b", source="t")], tmp_path / "b.jsonl")
    assert file_sha256(a) != file_sha256(b)
    assert len(file_sha256(a)) == 64


def test_a_byte_order_mark_before_the_first_row_is_read_past(tmp_path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "transcript": "hi"}\r\n{"id": "b", "transcript": "yo"}\r\n')
    assert [r.id for r in load_manifest(path)] == ["a", "b"]


def test_malformed_recorded_channels_are_refused_on_load(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "transcript": "hi", "extra": {"channels": "text"}}\n')
    with pytest.raises(ManifestError, match=r"c.jsonl:1.*'extra.channels'.*must list names among"):
        load_manifest(path)
