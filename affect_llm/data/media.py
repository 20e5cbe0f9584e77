"""Decoding a manifest row's media into arrays: waveform, video frames and face crops.

Shape letters: ``S`` audio samples (16 kHz mono), ``K`` frames, ``H``/``W`` frame size,
``h``/``w`` face crop size.

Policies, stated once:
- Audio comes from the row's ``audio`` file when set, else from the video's audio track.
  A video without an audio track gives ``audio=None`` and ``meta["audio_missing"]`` says why;
  it is never replaced by silence.
- Audio longer than ``max_audio_seconds`` is truncated to its first ``max_audio_seconds``.
- The visual stream is called ``video`` whether it comes from a clip or a still ``image`` (``K=1``).
  Frames are sampled uniformly (``num_frames`` segment centres) or, when ``fps`` is given, at
  that rate, thinned uniformly to at most ``max_frames``.
- Missing, empty, corrupt or undecodable files raise :class:`MediaError`; nothing is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affect_llm.data.manifest import ManifestRow

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")


class MediaError(ValueError):
    """A media file that cannot be used.

    Attributes:
        path: The file.
        field: The manifest field that referenced it (``video``, ``audio``, ``image``).
        reason: What is wrong.
    """

    def __init__(self, path: str | Path, field: str, reason: str) -> None:
        self.path = Path(path)
        self.field = field
        self.reason = reason
        super().__init__(f"{self.path}: field '{field}': {reason}")


@dataclass
class MediaItem:
    """Decoded media of one sample; any part may be None when the sample lacks it.

    Attributes:
        audio: ``(S,)`` float32 mono waveform at 16 kHz.
        video: ``(K, H, W, 3)`` uint8 RGB frames of the clip, or the still image (``K=1``).
        face: ``(K, h, w, 3)`` uint8 RGB face crops (whole frame where no face was found).
        meta: Decoding facts: sources, original sample rate, durations, frame indices, ``face_found``.
    """

    audio: np.ndarray | None = None
    video: np.ndarray | None = None
    face: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)




def _require_file(path: Path, field_name: str) -> None:
    if not path.exists():
        raise MediaError(path, field_name, "file not found")
    if not path.is_file():
        raise MediaError(path, field_name, "not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(path, field_name, "empty file (0 bytes)")


def _to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``(S,)`` or ``(S, C)`` at any rate -> ``(S',)`` float32 at 16 kHz."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)  # (S, C) -> (S,)
    audio = audio.astype(np.float32, copy=False)
    if sample_rate != SAMPLE_RATE and audio.size:
        # soxr directly: librosa.resample would pay librosa's numba start-up (seconds) per process.
        import soxr

        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_audio_file(
    path: Path, *, max_seconds: float | None = None, field_name: str = "audio"
) -> tuple[np.ndarray, dict]:
    """Read an audio file as 16 kHz mono float32, truncated to ``max_seconds``.

    Returns:
        The waveform ``(S,)`` and meta (``orig_sample_rate``, ``orig_channels``, ``audio_seconds``,
        ``audio_truncated``).

    Raises:
        MediaError: If the file is missing, empty or cannot be decoded.
    """
    import soundfile as sf

    _require_file(path, field_name)
    try:
        info = sf.info(str(path))
        frames = -1 if max_seconds is None else int(round(max_seconds * info.samplerate))
        audio, sample_rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
        channels, total = info.channels, info.frames
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # Containers libsndfile cannot read (m4a, some mp3) go through librosa's audioread path.
        audio, sample_rate, channels, total = _load_with_librosa(path, max_seconds, field_name, exc)
    mono = _to_mono_16k(audio, sample_rate)
    meta = {
        "orig_sample_rate": int(sample_rate),
        "orig_channels": int(channels),
        "audio_seconds": mono.shape[0] / SAMPLE_RATE,
        "audio_truncated": bool(max_seconds is not None and total > max_seconds * sample_rate),
    }
    return mono, meta


def _load_with_librosa(
    path: Path, max_seconds: float | None, field_name: str, first_error: Exception
) -> tuple[np.ndarray, int, int, int]:
    import librosa
    from audioread.exceptions import DecodeError as AudioreadError  # librosa's fallback: NoBackendError

    try:
        audio, sample_rate = librosa.load(str(path), sr=None, mono=False, duration=max_seconds)
    except (OSError, RuntimeError, ValueError, EOFError, AudioreadError) as exc:
        raise MediaError(path, field_name, f"cannot decode audio ({first_error}; {exc})") from exc
    audio = audio.T if audio.ndim == 2 else audio[:, None]  # (C, S) -> (S, C)
    # librosa does not report the untruncated length cheaply; one more sample marks "maybe longer".
    total = audio.shape[0] + (1 if max_seconds is not None else 0)
    return audio, int(sample_rate), int(audio.shape[1]), total


def load_video_audio(path: Path, *, max_seconds: float | None = None) -> tuple[np.ndarray | None, dict]:
    """The audio track of a video as 16 kHz mono, or None with ``meta["audio_missing"]``.

    decord's AudioReader is tried first; ffmpeg (when on PATH) is the fallback.

    Raises:
        MediaError: If the container cannot be opened at all.
    """
    from decord import AudioReader, cpu
    from decord._ffi.base import DECORDError

    _require_file(path, "video")
    try:
        reader = AudioReader(str(path), ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True)
        audio = reader[:].asnumpy()[0]  # (1, S) -> (S,)
    except DECORDError as exc:
        if "find audio stream" in str(exc):
            return None, {"audio_missing": "video has no audio track"}
        return _ffmpeg_audio(path, max_seconds, first_error=exc)
    return _truncate(audio.astype(np.float32, copy=False), max_seconds)


def _truncate(audio: np.ndarray, max_seconds: float | None) -> tuple[np.ndarray, dict]:
    limit = None if max_seconds is None else int(round(max_seconds * SAMPLE_RATE))
    truncated = limit is not None and audio.shape[0] > limit
    if truncated:
        audio = audio[:limit]
    meta = {
        "orig_sample_rate": None,
        "audio_seconds": audio.shape[0] / SAMPLE_RATE,
        "audio_truncated": bool(truncated),
    }
    return np.ascontiguousarray(audio, dtype=np.float32), meta


def _ffmpeg_audio(
    path: Path, max_seconds: float | None, first_error: Exception
) -> tuple[np.ndarray | None, dict]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise MediaError(
            path, "video", f"cannot decode audio track ({first_error}) and ffmpeg is not on PATH"
        )
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    if max_seconds is not None:
        cmd += ["-t", str(max_seconds + 1.0)]
    cmd += ["-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    stderr = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        if "does not contain any stream" in stderr or "Output file #0 does not contain" in stderr:
            return None, {"audio_missing": "video has no audio track"}
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"ffmpeg exit code {proc.returncode}"
        raise MediaError(path, "video", f"cannot decode audio track: {last[:200]}")
    audio = np.frombuffer(proc.stdout, dtype="<f4").copy()
    if audio.size == 0:
        return None, {"audio_missing": "video has no audio track"}
    return _truncate(audio, max_seconds)


def sample_frame_indices(
    num_video_frames: int,
    video_fps: float,
    *,
    num_frames: int = 8,
    fps: float | None = None,
    max_frames: int = 32,
) -> np.ndarray:
    """Indices of the frames to decode.

    Args:
        num_video_frames: Frames in the video.
        video_fps: The video's average frame rate.
        num_frames: ``K`` for uniform sampling (centres of ``K`` equal segments).
        fps: Sample at this rate instead, thinned uniformly to at most ``max_frames``.
        max_frames: Cap for fps-based sampling.

    Returns:
        Sorted int64 indices ``(K,)``; fewer than ``num_frames`` only when the video is shorter.
    """
    if num_video_frames <= 0:
        raise ValueError("sample_frame_indices: the video has no frames")
    if fps is None:
        count = min(num_frames, num_video_frames)
        edges = np.linspace(0, num_video_frames, count + 1)
        indices = ((edges[:-1] + edges[1:]) / 2).astype(np.int64)
    else:
        if fps <= 0 or video_fps <= 0:
            raise ValueError(f"sample_frame_indices: fps must be > 0, got fps={fps}, video fps={video_fps}")
        step = video_fps / fps
        indices = np.arange(0, num_video_frames, step).astype(np.int64)
        if indices.size > max_frames:
            keep = np.linspace(0, indices.size - 1, max_frames).round().astype(np.int64)
            indices = indices[keep]
    return np.clip(indices, 0, num_video_frames - 1)


def _read_frames(path: Path, choose: Callable[[int, float], list[int]]) -> tuple[np.ndarray, list[int], int, float]:
    """Decode the frames ``choose(total, fps)`` picks: ``(frames (K, H, W, 3), indices, total, fps)``.

    Raises:
        MediaError: If the file is missing, empty, corrupt or has no frames.
    """
    from decord import VideoReader, cpu
    from decord._ffi.base import DECORDError

    _require_file(path, "video")
    try:
        reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
        total, fps = len(reader), float(reader.get_avg_fps())
        if total == 0:
            raise MediaError(path, "video", "video stream has no frames")
        indices = choose(total, fps)
        frames = reader.get_batch(indices).asnumpy()  # (K, H, W, 3)
    except (DECORDError, RuntimeError) as exc:
        raise MediaError(path, "video", f"cannot decode video: {str(exc).splitlines()[0][:200]}") from exc
    return frames, indices, total, fps


def load_video_frames(
    path: Path, *, num_frames: int = 8, fps: float | None = None, max_frames: int = 32
) -> tuple[np.ndarray, dict]:
    """Decode sampled frames ``(K, H, W, 3)`` uint8 RGB with decord.

    Raises:
        MediaError: If the file is missing, empty, corrupt or has no frames.
    """
    frames, indices, total, video_fps = _read_frames(
        path, lambda total, rate: sample_frame_indices(total, rate, num_frames=num_frames, fps=fps,
                                                       max_frames=max_frames).tolist())
    meta = {
        "frame_indices": indices,
        "video_fps": video_fps,
        "num_video_frames": total,
        "video_seconds": total / video_fps if video_fps > 0 else None,
    }
    return np.ascontiguousarray(frames, dtype=np.uint8), meta


def probe_video(path: Path) -> float:
    """Open a video and decode its first, middle and last frame; returns its duration in seconds.

    The last frame catches files cut short after a readable header.

    Raises:
        MediaError: If the file is missing, empty, corrupt or has no frames.
    """
    _, _, total, fps = _read_frames(path, lambda total, _: sorted({0, total // 2, total - 1}))
    return total / fps if fps > 0 else 0.0


def load_image(path: Path) -> np.ndarray:
    """A still image as ``(1, H, W, 3)`` uint8 RGB.

    Raises:
        MediaError: If the file is missing, empty or not an image OpenCV can read.
    """
    import cv2

    _require_file(path, "image")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(path, "image", "cannot decode image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None]  # (1, H, W, 3)


def load_media(
    row: ManifestRow,
    *,
    num_frames: int = 8,
    fps: float | None = None,
    max_frames: int = 32,
    max_audio_seconds: float = 30.0,
    detect_faces: bool = True,
    face_size: int = 64,
) -> MediaItem:
    """Decode every medium of a row.

    Audio longer than ``max_audio_seconds`` is truncated to its first ``max_audio_seconds``.
    Frames come from the video, else from the still image; face crops are cut from those frames.

    Args:
        row: The manifest row; relative paths resolve against its manifest's folder.
        num_frames: ``K`` for uniform frame sampling.
        fps: Sample frames at this rate instead (capped at ``max_frames``).
        max_frames: Cap for fps-based sampling.
        max_audio_seconds: Truncation length for audio.
        detect_faces: Whether to compute face crops.
        face_size: Side of the face crops.

    Returns:
        The decoded :class:`MediaItem`.

    Raises:
        MediaError: If a referenced file is missing, empty or cannot be decoded.
    """
    meta: dict[str, Any] = {"id": row.id}
    audio = frames = faces = None
    audio_path, video_path, image_path = (
        row.media_path("audio"),
        row.media_path("video"),
        row.media_path("image"),
    )
    # Frames first: a corrupt container is then reported by the video decoder, whose error is clearer.
    if video_path is not None:
        frames, video_meta = load_video_frames(
            video_path, num_frames=num_frames, fps=fps, max_frames=max_frames
        )
        meta.update(video_meta, frames_source="video")
    elif image_path is not None:
        frames = load_image(image_path)
        meta.update(frames_source="image")
    if audio_path is not None:
        audio, audio_meta = load_audio_file(audio_path, max_seconds=max_audio_seconds)
        meta.update(audio_meta, audio_source="audio")
    elif video_path is not None:
        audio, audio_meta = load_video_audio(video_path, max_seconds=max_audio_seconds)
        meta.update(audio_meta, audio_source="video" if audio is not None else None)
    else:
        meta.update(audio_source=None, audio_missing="row has no audio or video")
    if frames is not None and detect_faces:
        from affect_llm.data.faces import FaceCropper

        faces, found = FaceCropper(face_size=face_size).crop_frames(frames)
        meta["face_found"] = found
    return MediaItem(audio=audio, video=frames, face=faces, meta=meta)
