"""Helpers for the data tests: ffmpeg clips, numpy-written wavs, manifest rows."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def make_clip(
    path: Path, *, seconds: float = 1.0, audio: bool = True, size: str = "128x96", rate: int = 10
) -> Path:
    """A test-pattern mp4 (H.264, optional 440 Hz AAC track) written by ffmpeg."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-shortest"] if audio else ["-an"]
    subprocess.run([*cmd, str(path)], check=True)
    return path


def make_wav(
    path: Path, *, seconds: float = 1.0, sample_rate: int = 16000, channels: int = 1, amplitude: float = 0.3
) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data, sample_rate)
    return path


def row(row_id: str, **fields) -> dict:
    """A schema-complete manifest row dict with defaults."""
    base = {
        "id": row_id,
        "video": None,
        "audio": None,
        "image": None,
        "transcript": None,
        "labels": ["happy"],
        "explanation": None,
        "valence": None,
        "arousal": None,
        "split": "train",
        "source": "test",
        "extra": {},
    }
    base.update(fields)
    return base


def write_jsonl(path: Path, rows: list[dict | bytes]) -> Path:
    with path.open("wb") as handle:
        for item in rows:
            handle.write(item if isinstance(item, bytes) else json.dumps(item).encode("utf-8"))
            handle.write(b"\n")
    return path
