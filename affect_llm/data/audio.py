"""Decoding audio, from an audio file or a video's sound track, into what the checks and the model take.

Files are read whole, at their own rate and channels, so that :func:`affect_llm.data.issues.check_audio_array`
judges the file as it is (its rate, its channels, every sample); only then is the audio cut to
the model's window and turned into 16 kHz mono.

Shape letters: ``S`` samples, ``C`` channels.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from affect_llm.data.decord_import import decord_module
from affect_llm.data.issues import MODEL_SAMPLE_RATE, MediaError, check_file, decoder_reason, sniff_format

SAMPLE_RATE = MODEL_SAMPLE_RATE


# Formats libsndfile reads itself: when it recognises such a file and then fails, the file is broken,
# and the librosa fallback would return what it decoded before the break as if it were the whole.
_SNDFILE_NATIVE = frozenset({"WAV", "WAVEX", "W64", "RF64", "AIFF", "FLAC", "CAF"})


def read_audio_file(path: Path, field: str = "audio") -> tuple[np.ndarray, int]:
    """Every sample of an audio file: ``(S, C)`` float32 and its sample rate.

    Raises:
        MediaError: If no decoder can read it, or it holds fewer samples than its header declares
            (a file cut short).
    """
    import soundfile as sf

    try:
        audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        if _sndfile_format(path) in _SNDFILE_NATIVE:
            reason = decoder_reason(exc)
            raise MediaError(path, field, f"cannot decode audio ({reason}): the file is damaged or cut short") from exc
        # Containers libsndfile cannot read (m4a, some mp3) go through librosa's audioread path.
        audio, sample_rate = _read_with_librosa(path, field, exc)
    declared = wav_declared_frames(path)
    if declared is not None and audio.shape[0] < declared:
        raise MediaError(path, field, f"cut short: its header declares {declared / sample_rate:.2f} s, the file "
                         f"holds {audio.shape[0] / sample_rate:.2f} s")
    return audio, int(sample_rate)


def _soundless_video(path: Path) -> bool:
    """A video container without a sound track (put in ``audio``, where no audio decoder says why)."""
    if sniff_format(path) not in ("mp4", "mkv", "avi", "flv"):
        return False
    try:
        return read_video_track(path)[0] is None
    except MediaError:
        return False


def _sndfile_format(path: Path) -> str | None:
    import soundfile as sf

    try:
        return sf.info(str(path)).format
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None


def wav_declared_frames(path: Path) -> int | None:
    """The frames a RIFF/WAVE header declares in its ``data`` chunk; None for other files and for
    sizes a streaming writer leaves unknown (0 or 0xFFFFFFFF)."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align, offset = 0, 12
    while offset + 8 <= len(head):
        chunk, size = head[offset : offset + 4], int.from_bytes(head[offset + 4 : offset + 8], "little")
        if chunk == b"fmt " and offset + 22 <= len(head):
            block_align = int.from_bytes(head[offset + 20 : offset + 22], "little")
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF) or block_align <= 0:
                return None
            return size // block_align
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def _read_with_librosa(path: Path, field: str, first_error: Exception) -> tuple[np.ndarray, int]:
    import librosa
    from audioread.exceptions import DecodeError as AudioreadError  # librosa's fallback: NoBackendError

    try:
        audio, sample_rate = librosa.load(str(path), sr=None, mono=False)
    except (OSError, RuntimeError, ValueError, EOFError, AudioreadError) as exc:
        if _soundless_video(path):
            raise MediaError(path, field, "the file has no audio stream (a video without sound)") from first_error
        reason = decoder_reason(exc)
        raise MediaError(path, field, f"cannot decode audio ({reason})") from first_error
    audio = audio.T if audio.ndim == 2 else audio[:, None]  # (C, S) -> (S, C)
    return np.ascontiguousarray(audio, dtype=np.float32), int(sample_rate)


def read_video_track(path: Path) -> tuple[np.ndarray | None, str | None]:
    """A video's sound track as 16 kHz mono ``(S,)``, or ``(None, why)`` when it has none.

    decord's AudioReader is tried first; ffmpeg (when on PATH) is the fallback.

    Raises:
        MediaError: If the container cannot be opened at all.
    """
    decord = decord_module()
    from decord._ffi.base import DECORDError

    try:
        reader = decord.AudioReader(str(path), ctx=decord.cpu(0), sample_rate=SAMPLE_RATE, mono=True)
        audio = reader[:].asnumpy()[0]  # (1, S) -> (S,)
    except DECORDError as exc:
        if "find audio stream" in str(exc):
            return None, "video has no audio track"
        return _ffmpeg_track(path, first_error=exc)
    return np.ascontiguousarray(audio, dtype=np.float32), None


def _ffmpeg_track(path: Path, first_error: Exception) -> tuple[np.ndarray | None, str | None]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise MediaError(path, "video", f"cannot decode audio track ({first_error}) and ffmpeg is not on PATH")
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
           "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    stderr = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        if "does not contain any stream" in stderr or "Output file #0 does not contain" in stderr:
            return None, "video has no audio track"
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"ffmpeg exit code {proc.returncode}"
        raise MediaError(path, "video", f"cannot decode audio track: {last[:200]}")
    audio = np.frombuffer(proc.stdout, dtype="<f4").copy()
    if audio.size == 0:
        return None, "video has no audio track"
    return audio, None


def to_model_audio(audio: np.ndarray, sample_rate: int, max_seconds: float | None) -> tuple[np.ndarray, dict]:
    """``(S,)`` or ``(S, C)`` at any rate -> ``(S',)`` float32 16 kHz mono, cut to ``max_seconds``.

    Cutting comes first, at the source rate: resampling what is thrown away would be wasted.

    Returns:
        The waveform and meta (``audio_seconds`` used, ``audio_file_seconds``, ``audio_truncated``).
    """
    total = audio.shape[0]
    limit = total if max_seconds is None else min(total, int(round(max_seconds * sample_rate)))
    audio = audio[:limit]
    if audio.ndim == 2:
        audio = audio.mean(axis=1)  # (S, C) -> (S,)
    audio = audio.astype(np.float32, copy=False)
    if sample_rate != SAMPLE_RATE and audio.size:
        # soxr directly: librosa.resample would pay librosa's numba start-up (seconds) per process.
        import soxr

        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ")
    mono = np.ascontiguousarray(audio, dtype=np.float32)
    meta = {
        "audio_seconds": mono.shape[0] / SAMPLE_RATE,
        "audio_file_seconds": total / sample_rate if sample_rate else 0.0,
        "audio_truncated": bool(limit < total),
    }
    return mono, meta


def load_audio_file(path: Path, *, max_seconds: float | None = None, field_name: str = "audio") -> tuple[np.ndarray, dict]:
    """Read an audio file as 16 kHz mono float32, truncated to ``max_seconds`` (no checks).

    Returns:
        The waveform ``(S,)`` and meta (``orig_sample_rate``, ``orig_channels``, ``audio_seconds``,
        ``audio_truncated``).

    Raises:
        MediaError: If the file is missing, empty or cannot be decoded.
    """
    problem = check_file(Path(path), field_name)
    if problem is not None:
        raise MediaError(path, field_name, problem.reason, problem.code)
    audio, sample_rate = read_audio_file(Path(path), field_name)
    mono, meta = to_model_audio(audio, sample_rate, max_seconds)
    return mono, {"orig_sample_rate": sample_rate, "orig_channels": int(audio.shape[1]), **meta}


def load_video_audio(path: Path, *, max_seconds: float | None = None) -> tuple[np.ndarray | None, dict]:
    """The audio track of a video as 16 kHz mono, or None with ``meta["audio_missing"]`` (no checks).

    Raises:
        MediaError: If the file is missing, empty or the container cannot be opened.
    """
    problem = check_file(Path(path), "video")
    if problem is not None:
        raise MediaError(path, "video", problem.reason, problem.code)
    audio, missing = read_video_track(Path(path))
    if audio is None:
        return None, {"audio_missing": missing}
    mono, meta = to_model_audio(audio, SAMPLE_RATE, max_seconds)
    return mono, {"orig_sample_rate": None, **meta}
