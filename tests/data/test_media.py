from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datahelpers import make_wav

from affect_llm.data.faces import FaceCropper
from affect_llm.data.manifest import ManifestRow
from affect_llm.data.media import MediaError, load_media, load_video_frames, sample_frame_indices
from affect_llm.hashing import file_sha256


def test_video_with_audio_track_gives_frames_faces_and_16k_audio(media_dir: Path) -> None:
    item = load_media(ManifestRow(id="a", video=str(media_dir / "av.mp4")), num_frames=4, face_size=32)
    assert item.video.shape == (4, 96, 128, 3) and item.video.dtype == np.uint8
    assert item.face.shape == (4, 32, 32, 3)
    # A test pattern has no face: the fallback is recorded, never hidden.
    assert item.meta["face_found"] == [False] * 4
    assert item.audio.dtype == np.float32 and item.audio.ndim == 1
    assert abs(item.audio.shape[0] / 16000 - 1.0) < 0.1
    assert item.meta["audio_source"] == "video"


def test_video_without_audio_track_gives_no_audio(media_dir: Path) -> None:
    item = load_media(ManifestRow(id="a", video=str(media_dir / "silent_video.mp4")), detect_faces=False)
    assert item.audio is None and item.face is None
    assert item.meta["audio_missing"] == "video has no audio track"


def test_audio_file_is_resampled_to_mono_and_truncated(tmp_path: Path) -> None:
    wav = make_wav(tmp_path / "s.wav", seconds=2.0, sample_rate=8000, channels=2)
    item = load_media(ManifestRow(id="a", audio=str(wav)), max_audio_seconds=1.5)
    assert item.audio.shape == (24000,)
    assert item.meta["orig_sample_rate"] == 8000 and item.meta["orig_channels"] == 2
    assert item.meta["audio_truncated"] is True
    assert item.video is None


def test_a_window_of_leading_silence_starts_at_the_sound(tmp_path: Path) -> None:
    """Judged whole, the file is not silent; its first 4 s are, and the model must not hear only those."""
    import soundfile as sf

    t = np.arange(2 * 16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = tmp_path / "late.wav"
    sf.write(str(path), np.concatenate([np.zeros(5 * 16000, np.float32), tone]), 16000)
    item = load_media(ManifestRow(id="late", audio=str(path)), max_audio_seconds=4.0)
    # A tenth of a second before the first sample above the silence level (the tone's first is 0).
    assert abs(item.audio.shape[0] - (2 * 16000 + 1600)) <= 1 and np.abs(item.audio[1600:]).max() > 0.25
    assert item.meta["audio_start_seconds"] == pytest.approx(4.9, abs=1e-3)
    assert item.meta["audio_file_seconds"] == pytest.approx(7.0)
    # Sound inside the window: the window starts at 0, pause included.
    early = load_media(ManifestRow(id="late", audio=str(path)), max_audio_seconds=6.0)
    assert early.meta["audio_start_seconds"] == 0.0 and early.audio.shape == (6 * 16000,)


def test_frames_of_a_variable_rate_video_are_spread_in_time(tmp_path: Path, media_dir: Path) -> None:
    """30 frames in the first second, then one every 0.2 s up to 6.8 s: by index alone, half the
    samples would fall in that first second."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    path = tmp_path / "vfr.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=30:duration=2", "-vf",
                    "setpts='if(lt(N,30),N/30,1+(N-30)*0.2)/TB'", "-fps_mode", "vfr", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    _, meta = load_video_frames(path, num_frames=8)
    indices = meta["frame_indices"]
    assert sum(i < 30 for i in indices) == 1 and indices == sorted(indices), indices
    # A constant-rate video keeps the segment centres by index.
    _, steady = load_video_frames(media_dir / "av.mp4", num_frames=4)
    assert steady["frame_indices"] == sample_frame_indices(steady["num_video_frames"], 10.0, num_frames=4).tolist()


def test_missing_and_empty_files_raise_media_error(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="field 'video': empty file"):
        load_media(ManifestRow(id="a", video=str(tmp_path / "empty.mp4")))
    with pytest.raises(MediaError, match="field 'audio': file not found"):
        load_media(ManifestRow(id="a", audio=str(tmp_path / "nope.wav")))


def test_frame_sampling_uniform_and_fps_capped() -> None:
    assert sample_frame_indices(100, 25.0, num_frames=4).tolist() == [12, 37, 62, 87]
    assert sample_frame_indices(3, 25.0, num_frames=8).tolist() == [0, 1, 2]
    capped = sample_frame_indices(1000, 25.0, fps=5.0, max_frames=16)
    assert len(capped) == 16 and capped[0] == 0 and np.all(np.diff(capped) > 0)


def test_content_hash_follows_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = file_sha256(path)
    assert file_sha256(path) == first
    path.write_bytes(b"two!")
    assert file_sha256(path) != first


def test_face_crop_box_is_square_and_inside_frame() -> None:
    cropper = FaceCropper(face_size=16, margin=0.5)
    x, y, w, h = cropper.square_box((90, 50, 20, 30), height=80, width=100)
    assert w == h and x >= 0 and y >= 0 and x + w <= 100 and y + h <= 80
