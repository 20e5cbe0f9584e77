"""Decoding a manifest row's media into arrays, judged on the way: waveform, video frames and face crops.

Shape letters: ``S`` audio samples (16 kHz mono), ``K`` frames, ``H``/``W`` frame size,
``h``/``w`` face crop size.

Policies, stated once:
- Every medium a row names is opened and judged with the checks of :mod:`affect_llm.data.issues`
  (exists, regular file, content of the right kind, decodes, sample rate, channels, NaN/inf,
  duration, silence, audio track), so ``data check``, training, ``explain``, chat and the server
  reach the same verdict: :func:`load_media` raises :class:`MediaError` on any error and records
  warnings in ``meta["issues"]``; :func:`decode_row` returns them all without raising.
- Audio comes from the row's ``audio`` file when set, else from the video's audio track.
  A video without an audio track, or whose audio is silent, gives ``audio=None`` and
  ``meta["audio_missing"]`` says why; it is never replaced by silence.
- Audio files are judged whole, then cut to their first ``max_audio_seconds``; when those are silent and
  sound comes later, the window starts just before the sound (``meta["audio_start_seconds"]``).
- The visual stream is called ``video`` whether it comes from a clip or a still ``image`` (``K=1``).
  Frames are sampled uniformly (``num_frames`` segment centres) or, when ``fps`` is given, at
  that rate, thinned uniformly to at most ``max_frames``; uniformly in time, also when the video's
  frame rate varies. The last frame is always decoded too:
  it catches files cut short after a readable header.
- Face crops record per frame which detector made them (``meta["faces"]``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affect_llm.data.audio import (
    SAMPLE_RATE,
    load_audio_file,
    load_video_audio,
    read_audio_file,
    read_video_track,
    to_model_audio,
)
from affect_llm.data.decord_import import decord_module
from affect_llm.data.issues import (
    DEFAULT_POLICY,
    Issue,
    MediaError,
    MediaPolicy,
    check_audio_array,
    check_file,
    check_format,
    decoder_reason,
    errors_of,
    sniff_format,
)
from affect_llm.data.manifest import ManifestRow

__all__ = ["SAMPLE_RATE", "MediaError", "MediaItem", "decode_row", "load_audio_file", "load_image", "load_media",
           "load_video_audio", "load_video_frames", "sample_frame_indices"]


@dataclass
class MediaItem:
    """Decoded media of one sample; any part may be None when the sample lacks it.

    Attributes:
        audio: ``(S,)`` float32 mono waveform at 16 kHz.
        video: ``(K, H, W, 3)`` uint8 RGB frames of the clip, or the still image (``K=1``).
        face: ``(K, h, w, 3)`` uint8 RGB face crops (whole frame where no face was found).
        meta: Decoding facts: sources, original sample rate, durations, frame indices,
            ``faces`` (per frame: detector, score, box, angle), ``face_found``, ``issues``.
    """

    audio: np.ndarray | None = None
    video: np.ndarray | None = None
    face: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _require_file(path: Path, field_name: str) -> None:
    problem = check_file(path, field_name)
    if problem is not None:
        raise MediaError(path, field_name, problem.reason, problem.code)


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
    _require_file(path, "video")
    try:
        return _decode_frames(path, path, choose)
    except MediaError as error:
        if not _unindexed_stream(path, error):
            raise
        with tempfile.TemporaryDirectory(prefix="affect-remux-") as folder:
            indexed = _remux(path, Path(folder) / "video.mkv")
            if indexed is None:
                raise
            return _decode_frames(path, indexed, choose)


def _unindexed_stream(path: Path, error: MediaError) -> bool:
    """A WebM/Matroska written as a stream, as browsers' MediaRecorder writes it: no duration and no
    index, which decord cannot measure although every frame is there."""
    return "broken metadata" in error.reason and sniff_format(path) == "mkv" and shutil.which("ffmpeg") is not None


def _remux(path: Path, out: Path) -> Path | None:
    """The video stream copied, not re-encoded, into a Matroska file with its duration and index."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f",
               "matroska", str(out)]
    done = subprocess.run(command, capture_output=True, check=False, timeout=600)
    return out if done.returncode == 0 and out.is_file() and out.stat().st_size > 0 else None


def _decode_frames(path: Path, readable: Path, choose: Callable[[int, float], list[int]]
                   ) -> tuple[np.ndarray, list[int], int, float]:
    """:func:`_read_frames` on ``readable`` (``path`` itself, or its remuxed copy), errors naming ``path``."""
    decord = decord_module()
    from decord._ffi.base import DECORDError

    try:
        reader = decord.VideoReader(str(readable), ctx=decord.cpu(0), num_threads=1)
        total, fps = len(reader), float(reader.get_avg_fps())
        if total == 0:
            raise MediaError(path, "video", "video stream has no frames", "no_frames")
        indices = _even_in_time(reader, [int(i) for i in choose(total, fps)], total)
        # The last frame too: a file cut short after a readable header fails there.
        wanted = sorted(set(indices) | {total - 1})
        batch = reader.get_batch(wanted).asnumpy()  # (K', H, W, 3)
    except (DECORDError, RuntimeError) as exc:
        if "cannot find video stream" in str(exc):
            raise MediaError(path, "video", "no video stream (sound only): put it in 'audio'", "wrong_kind") from exc
        reason = decoder_reason(exc, 200)
        raise MediaError(path, "video", f"cannot decode video: {reason}") from exc
    frames = batch[[wanted.index(i) for i in indices]]  # (K, H, W, 3)
    return frames, indices, total, fps


def _even_in_time(reader: Any, indices: list[int], total: int) -> list[int]:
    """Indices chosen as if frames were evenly spaced, moved, in a variable-frame-rate video (a phone
    recording), to the frames at the same point in time; a constant-rate video keeps them.

    Index ``i`` stands for the middle of the ``i``-th of ``total`` equal parts of the clip's duration;
    by index alone, a clip filmed at 30 fps for a second and at 5 fps after would have most of its
    samples in that first second.
    """
    from decord._ffi.base import DECORDError

    if total < 2:
        return indices
    try:
        stamps = np.asarray(reader.get_frame_timestamp(list(range(total))), dtype=np.float64)  # (total, 2)
    except (DECORDError, RuntimeError, ValueError):
        return indices
    starts = stamps[:, 0]
    duration = float(stamps[-1, 1] - starts[0])
    if not np.isfinite(stamps).all() or duration <= 0:
        return indices
    frame = duration / total
    if np.abs(starts - (starts[0] + np.arange(total) * frame)).max() <= frame / 2:
        return indices  # a constant frame rate: each index already sits at its time
    targets = starts[0] + (np.asarray(indices, dtype=np.float64) + 0.5) * frame
    return np.clip(np.searchsorted(starts, targets, side="right") - 1, 0, total - 1).astype(int).tolist()


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


@dataclass(frozen=True)
class _Decoding:
    """Settings of one :func:`decode_row` call."""

    num_frames: int
    fps: float | None
    max_frames: int
    max_audio_seconds: float | None
    detect_faces: bool
    face_size: int
    policy: MediaPolicy


def _opened(path: Path, field_name: str, policy: MediaPolicy, issues: list[Issue]) -> bool:
    """File and content checks; False when the file cannot be decoded (the error is recorded)."""
    found = check_file(path, field_name, policy) or check_format(path, field_name, policy)
    if found is not None:
        issues.append(found)
    return found is None or not found.is_error


def _decode(step: Callable[[], Any], issues: list[Issue], policy: MediaPolicy) -> Any:
    """Run one decoder; a :class:`MediaError` becomes an issue and the result None."""
    try:
        return step()
    except MediaError as exc:
        issues.append(policy.issue(exc.code, exc.field, exc.reason, exc.path))
        return None


def _frames(row: ManifestRow, how: _Decoding, meta: dict, issues: list[Issue]) -> np.ndarray | None:
    """Frames of the video, else of the image; every visual field set is opened and judged."""
    frames = None
    image_path, video_path = row.media_path("image"), row.media_path("video")
    if image_path is not None and _opened(image_path, "image", how.policy, issues):
        image = _decode(lambda: load_image(image_path), issues, how.policy)
        if image is not None and video_path is None:
            frames = image
            meta.update(frames_source="image")
    if video_path is not None and _opened(video_path, "video", how.policy, issues):
        decoded = _decode(lambda: load_video_frames(video_path, num_frames=how.num_frames, fps=how.fps,
                                                    max_frames=how.max_frames), issues, how.policy)
        if decoded is not None:
            frames, video_meta = decoded
            meta.update(video_meta, frames_source="video")
    return frames


def _audio(row: ManifestRow, how: _Decoding, has_frames: bool, meta: dict, issues: list[Issue]) -> np.ndarray | None:
    """The row's audio judged whole, then cut and resampled; None when absent, silent or refused."""
    path = row.media_path("audio")
    if path is None:
        return _track(row, how, has_frames, meta, issues)
    if not _opened(path, "audio", how.policy, issues):
        return None
    decoded = _decode(lambda: read_audio_file(path), issues, how.policy)
    if decoded is None:
        return None
    raw, sample_rate = decoded  # (S, C)
    found = check_audio_array(raw, sample_rate, has_frames=has_frames, policy=how.policy, path=path)
    issues.extend(found)
    meta.update(orig_sample_rate=sample_rate, orig_channels=int(raw.shape[1]), audio_source="audio")
    return _usable(raw, sample_rate, found, how, meta)


def _track(row: ManifestRow, how: _Decoding, has_frames: bool, meta: dict, issues: list[Issue]) -> np.ndarray | None:
    path = row.media_path("video")
    if path is None or not has_frames:
        # No video, or one that did not decode (its error is recorded already).
        meta.update(audio_source=None, audio_missing="row has no audio or video" if path is None else None)
        return None
    decoded = _decode(lambda: read_video_track(path), issues, how.policy)
    if decoded is None:
        return None
    track, missing = decoded
    if track is None:
        issues.append(how.policy.issue("no_audio_track", "video", f"{missing}: used without audio", path))
        meta.update(audio_source=None, audio_missing=missing)
        return None
    found = [how.policy.issue(i.code, "video", f"audio track: {i.reason}", path)
             for i in check_audio_array(track, None, field="video", has_frames=True, policy=how.policy)]
    issues.extend(found)
    meta.update(orig_sample_rate=None, audio_source="video")
    return _usable(track, SAMPLE_RATE, found, how, meta)


def _usable(raw: np.ndarray, sample_rate: int, found: list[Issue], how: _Decoding, meta: dict) -> np.ndarray | None:
    if errors_of(found):
        return None
    if any(issue.code == "silent_track" for issue in found):
        meta.update(audio_source=None, audio_missing="audio is silent")
        return None
    start = _window_start(raw, sample_rate, how.max_audio_seconds, how.policy.silence_peak)
    audio, audio_meta = to_model_audio(raw[start:], sample_rate, how.max_audio_seconds)
    meta.update(audio_meta, audio_start_seconds=start / sample_rate, audio_file_seconds=raw.shape[0] / sample_rate)
    return audio


def _window_start(raw: np.ndarray, sample_rate: int, max_seconds: float | None, silence_peak: float) -> int:
    """Where the model's audio window starts: 0, or, when the first ``max_seconds`` are silent and
    sound comes later (a recording that starts with a pause), a tenth of a second before the sound.

    The file as a whole was judged not silent; a window of its leading silence would still be
    silence presented to the model as a voice.
    """
    if not max_seconds or max_seconds <= 0:
        return 0
    limit = int(round(max_seconds * sample_rate))
    level = np.abs(raw) if raw.ndim == 1 else np.abs(raw).max(axis=1)  # (S,)
    if level.shape[0] <= limit or level[:limit].max() >= silence_peak:
        return 0
    first = int(np.argmax(level >= silence_peak))
    return max(0, first - sample_rate // 10)


def _faces(frames: np.ndarray, field_name: str, how: _Decoding, meta: dict, issues: list[Issue]) -> np.ndarray:
    from affect_llm.data.faces import FaceCropper

    cropper = FaceCropper(face_size=how.face_size)
    faces, crops = cropper.crop_frames_with_meta(frames)
    meta["faces"] = [crop.to_dict() for crop in crops]
    meta["face_found"] = [crop.found for crop in crops]
    if not any(meta["face_found"]):
        issues.append(how.policy.issue("no_face", field_name, f"no face found in {len(crops)} frame(s) "
                                       f"by {cropper.detector_in_use()}"))
    return faces


def _channel_issues(row: ManifestRow, policy: MediaPolicy) -> list[Issue]:
    """Judge ``extra.channels`` against the row's fields: a channel listed without the medium that
    carries it is an error (the evaluation would hold the answer to a channel the model never got),
    and listed channels that leave the model nothing are ``no_content``."""
    issues: list[Issue] = []
    channels = row.channels
    if channels is None:
        return issues
    carried = {"audio": bool(row.audio or row.video), "video": bool(row.video or row.image),
               "text": bool(row.transcript)}
    unbacked = [channel for channel in channels if not carried[channel]]
    if unbacked:
        issues.append(policy.issue("channel_without_medium", "extra.channels",
                                   f"lists {unbacked}, which no field of the row carries (audio: 'audio' or "
                                   "'video'; video: 'video' or 'image'; text: 'transcript')"))
    if not any(carried[channel] for channel in channels):
        issues.append(policy.issue("no_content", "extra.channels",
                                   f"{list(channels)} leaves the model no medium and no words"))
    return issues


def decode_row(
    row: ManifestRow,
    *,
    num_frames: int = 8,
    fps: float | None = None,
    max_frames: int = 32,
    max_audio_seconds: float | None = 30.0,
    detect_faces: bool = True,
    face_size: int = 64,
    policy: MediaPolicy | None = None,
) -> tuple[MediaItem, list[Issue]]:
    """Decode and judge every medium of a row; never raises for a bad medium.

    Arguments as :func:`load_media`. Returns the item (None for each part that is absent or
    refused) and every issue found, errors and warnings.
    """
    how = _Decoding(num_frames, fps, max_frames, max_audio_seconds, detect_faces, face_size, policy or DEFAULT_POLICY)
    meta: dict[str, Any] = {"id": row.id}
    issues: list[Issue] = []
    if not row.modalities() and not row.transcript:
        issues.append(how.policy.issue("no_content", None, "no media and no transcript"))
        return MediaItem(meta=meta), issues
    channel_issues = _channel_issues(row, how.policy)
    if any(issue.code == "no_content" for issue in channel_issues):
        return MediaItem(meta=meta), issues + channel_issues
    frames = _frames(row, how, meta, issues)
    audio = _audio(row, how, frames is not None, meta, issues)
    faces = None
    if frames is not None and detect_faces:
        faces = _faces(frames, meta["frames_source"], how, meta, issues)
    # After the media's own issues: a missing or broken file is the first thing a refusal names.
    issues.extend(channel_issues)
    meta["issues"] = [issue.to_dict() for issue in issues]
    return MediaItem(audio=audio, video=frames, face=faces, meta=meta), issues


def decode_row_audio(
    row: ManifestRow, *, max_audio_seconds: float | None = 30.0, policy: MediaPolicy | None = None
) -> tuple[np.ndarray | None, dict[str, Any], list[Issue]]:
    """The row's audio (its ``audio`` file, else its video's sound track) judged as :func:`decode_row`
    judges it, without decoding frames: for a reader of the voice alone (speech recognition).

    Returns:
        The 16 kHz mono waveform (None when absent, silent or refused), its meta (``audio_missing``
        says why it is absent), and the audio's issues.
    """
    how = _Decoding(1, None, 1, max_audio_seconds, False, 64, policy or DEFAULT_POLICY)
    meta: dict[str, Any] = {"id": row.id}
    issues: list[Issue] = []
    # A video's sound track is read whether or not its frames would decode: only the voice is wanted.
    audio = _audio(row, how, row.media_path("video") is not None, meta, issues)
    return audio, meta, issues


def load_media(
    row: ManifestRow,
    *,
    num_frames: int = 8,
    fps: float | None = None,
    max_frames: int = 32,
    max_audio_seconds: float | None = 30.0,
    detect_faces: bool = True,
    face_size: int = 64,
    policy: MediaPolicy | None = None,
) -> MediaItem:
    """Decode every medium of a row, refusing the row on any error of the media checks.

    Audio longer than ``max_audio_seconds`` is truncated to its first ``max_audio_seconds``.
    Frames come from the video, else from the still image; face crops are cut from those frames.

    Args:
        row: The manifest row; relative paths resolve against its manifest's folder.
        num_frames: ``K`` for uniform frame sampling.
        fps: Sample frames at this rate instead (capped at ``max_frames``).
        max_frames: Cap for fps-based sampling.
        max_audio_seconds: Truncation length for audio (None: whole files).
        detect_faces: Whether to compute face crops.
        face_size: Side of the face crops.
        policy: Severity adjustments (default: the one every command uses).

    Returns:
        The decoded :class:`MediaItem`; its ``meta["issues"]`` lists the warnings.

    Raises:
        MediaError: For the first error found (file, field and reason); ``.issues`` holds them all.
    """
    item, issues = decode_row(row, num_frames=num_frames, fps=fps, max_frames=max_frames,
                              max_audio_seconds=max_audio_seconds, detect_faces=detect_faces,
                              face_size=face_size, policy=policy)
    if errors_of(issues):
        raise MediaError.from_issues(issues)
    return item
