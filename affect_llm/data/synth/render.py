"""Write one synthetic sample's media (wav, png, mp4) from its spec; no randomness is added here.

A clip with a channel missing gets only the files its layout names: without a voice no wav and an
mp4 with no sound track at all; without a face, frames of the background only; a text-only clip
gets no file, its transcript is all it has.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from affect_llm.data.synth.face import IMAGE_SIZE, render_background_frames, render_face_frames
from affect_llm.data.synth.voice import render_voice

if TYPE_CHECKING:
    from affect_llm.data.synth.generate import SampleSpec

FPS = 4
MIN_FRAMES = 4


@dataclass(frozen=True)
class RenderedMedia:
    """What was written for one sample.

    Attributes:
        paths: Media paths relative to the set folder, by kind (``wav``, ``png``, ``mp4``).
        duration: Clip length in seconds (0 for a text-only or image-only clip).
        num_frames: Frames in the mp4 (1 for an image-only clip, 0 without any picture).
    """

    paths: dict[str, str]
    duration: float
    num_frames: int


def render_media(spec: SampleSpec, out_dir: Path) -> RenderedMedia:
    """Write the files of ``spec.media`` under ``out_dir/media``.

    Args:
        spec: The planned sample.
        out_dir: Set folder.

    Returns:
        The written paths, the clip length and the frame count.

    Raises:
        RuntimeError: If espeak-ng, sox, ffmpeg or OpenCV fails.
    """
    rel = {ext: f"media/{spec.id}.{ext}" for ext in spec.media}
    wav = out_dir / rel["wav"] if "wav" in rel else None
    duration = 0.0
    if wav is not None:
        duration = render_voice(spec.spoken, spec.prosody, wav)
    elif spec.seconds is not None:
        duration = spec.seconds
    if "png" not in rel:
        return RenderedMedia(rel, round(duration, 4), 0)
    num_frames = max(MIN_FRAMES, math.ceil(duration * FPS)) if "mp4" in rel else 1
    face_level = spec.cues.get("face")
    if face_level is None:
        frames = render_background_frames(spec.face_style, num_frames)  # (K, H, W, 3)
    else:
        frames = render_face_frames(face_level, spec.face_style, num_frames, spec.face_geometry,
                                    still=spec.face_still)  # (K, H, W, 3)
    png = out_dir / rel["png"]
    if not cv2.imwrite(str(png), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR)):
        raise RuntimeError(f"OpenCV could not write {png}")
    if "mp4" in rel:
        write_mp4(frames, wav, out_dir / rel["mp4"])
    return RenderedMedia(rel, round(duration, 4), num_frames)


def write_mp4(frames: np.ndarray, wav: Path | None, out_mp4: Path) -> None:
    """Encode RGB frames (K, H, W, 3) as H.264 yuv420p at ``FPS``, with the wav muxed as AAC.

    Without a wav the file has no sound track at all, which is what a clip without audio is.
    """
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{IMAGE_SIZE}x{IMAGE_SIZE}", "-r", str(FPS), "-i", "-",
    ]  # fmt: skip
    if wav is not None:
        command += ["-i", str(wav), "-map", "0:v", "-map", "1:a"]
    command += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1"]  # fmt: skip
    if wav is not None:
        command += ["-c:a", "aac", "-b:a", "64k", "-shortest", "-flags:a", "+bitexact"]
    command += ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", str(out_mp4)]
    result = subprocess.run(
        command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False
    )
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ffmpeg failed writing {out_mp4} (exit {result.returncode}): {stderr}")
