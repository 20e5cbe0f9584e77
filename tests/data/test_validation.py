"""The public validation API: one severity table, checks on files and on in-memory audio, one verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datahelpers import make_wav

from affect_llm.data.manifest import ManifestRow
from affect_llm.data.media import load_media
from affect_llm.data.validation import (
    SEVERITY,
    MediaError,
    MediaPolicy,
    check_audio_array,
    errors_of,
    validate_media,
)


def _codes(issues) -> list[tuple[str, str]]:
    return [(issue.code, issue.severity) for issue in issues]


def test_every_code_has_a_severity() -> None:
    assert set(SEVERITY.values()) == {"error", "warning"}
    # What the default table keeps usable: telephone-band audio and a silent track beside frames.
    assert SEVERITY["low_sample_rate"] == SEVERITY["silent_track"] == SEVERITY["no_audio_track"] == "warning"


@pytest.mark.parametrize(("audio", "rate", "kwargs", "expected"), [
    (np.full(8000, np.nan, np.float32), 16000, {}, [("non_finite", "error")]),
    (np.zeros(0, np.float32), 16000, {}, [("no_samples", "error")]),
    (np.full(1600, 0.2, np.float32), 16000, {}, [("too_short", "error")]),
    (np.zeros(16000, np.float32), 16000, {}, [("silent", "error")]),
    (np.zeros(16000, np.float32), 16000, {"has_frames": True}, [("silent_track", "warning")]),
    (np.full((8000, 2), 0.2, np.float32), 8000, {}, [("low_sample_rate", "warning"), ("multichannel", "warning")]),
    (np.full(8000, 0.2, np.float32), 8000, {"policy": MediaPolicy(min_sample_rate=16000)},
     [("below_min_sample_rate", "error")]),
    (np.full(16000, 0.2, np.float32), 16000, {}, []),
])
def test_audio_array_checks(audio: np.ndarray, rate: int, kwargs: dict, expected: list) -> None:
    assert _codes(check_audio_array(audio, rate, **kwargs)) == expected


def test_a_policy_may_change_a_severity_but_not_invent_a_code() -> None:
    policy = MediaPolicy(overrides={"silent_track": "error"})
    assert _codes(check_audio_array(np.zeros(16000, np.float32), 16000, has_frames=True, policy=policy)) == [
        ("silent_track", "error")]
    with pytest.raises(ValueError, match="unknown codes \\['loud'\\]"):
        MediaPolicy(overrides={"loud": "error"})


def test_validate_media_takes_plain_paths(tmp_path: Path, media_dir: Path) -> None:
    issues = validate_media({"video": media_dir / "silent_video.mp4"})
    assert _codes(issues) == [("no_audio_track", "warning"), ("no_face", "warning")]
    assert errors_of(issues) == []
    assert _codes(validate_media({"audio": tmp_path / "none.wav"})) == [("missing", "error")]
    assert _codes(validate_media({})) == [("no_content", "error")]
    assert validate_media({"transcript": "only words"}) == []
    with pytest.raises(ValueError, match="unknown keys \\['vidoe'\\]"):
        validate_media({"vidoe": "x.mp4"})


def test_content_decides_the_kind_not_the_name(tmp_path: Path) -> None:
    wav = make_wav(tmp_path / "voice.wav")
    (tmp_path / "voice.mp3").write_bytes(wav.read_bytes())
    (tmp_path / "voice.png").write_bytes(wav.read_bytes())
    assert _codes(validate_media({"audio": tmp_path / "voice.mp3"})) == [("wrong_extension", "warning")]
    issues = validate_media({"image": tmp_path / "voice.png"})
    assert _codes(issues) == [("wrong_kind", "error")] and "holds WAV audio, not image" in issues[0].reason


def test_load_media_refuses_exactly_what_validation_calls_an_error(tmp_path: Path) -> None:
    sf.write(str(tmp_path / "nan.wav"), np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    row = ManifestRow(id="n", audio=str(tmp_path / "nan.wav"))
    (issue,) = validate_media(row)
    with pytest.raises(MediaError) as info:
        load_media(row)
    assert (info.value.code, info.value.reason, info.value.field) == (issue.code, issue.reason, "audio")
    assert str(info.value) == f"{tmp_path / 'nan.wav'}: field 'audio': 16000 NaN/inf samples"


def test_a_silent_track_beside_frames_is_left_out_not_fed_as_silence(tmp_path: Path) -> None:
    from datahelpers import make_clip

    make_wav(tmp_path / "quiet.wav", amplitude=0.0)
    clip = make_clip(tmp_path / "clip.mp4", audio=False)
    item = load_media(ManifestRow(id="q", video=str(clip), audio=str(tmp_path / "quiet.wav")), detect_faces=False)
    assert item.audio is None and item.video is not None
    assert item.meta["audio_missing"] == "audio is silent"
    assert [issue["code"] for issue in item.meta["issues"]] == ["silent_track"]


def test_face_meta_names_the_detector_of_every_frame(tmp_path: Path) -> None:
    from affect_llm.data.synth.face import render_face_frames, sample_face_style
    from affect_llm.data.synth.render import write_mp4

    frames = render_face_frames("happy", sample_face_style(np.random.default_rng(0)), 4)  # (K, H, W, 3)
    write_mp4(frames, None, tmp_path / "face.mp4")
    item = load_media(ManifestRow(id="f", video=str(tmp_path / "face.mp4")), num_frames=3)
    crops = item.meta["faces"]
    assert len(crops) == 3 and item.meta["face_found"] == [True] * 3
    for crop in crops:
        assert crop["method"] in ("blazeface", "haar") and crop["score"] > 0
        assert len(crop["box"]) == 4 and isinstance(crop["angle"], float)
