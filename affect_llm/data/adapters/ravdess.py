"""RAVDESS (Livingstone & Russo, 2018): 24 actors, acted speech and song, 8 emotions.

File names carry every label: ``MM-VV-EE-II-SS-RR-AA.ext``, e.g. ``03-01-06-01-02-01-12.wav``:
modality (01 audio-video, 02 video-only, 03 audio-only), vocal channel (01 speech, 02 song),
emotion (01 neutral ... 08 surprised), intensity (01 normal, 02 strong), statement (01 "Kids are
talking by the door", 02 "Dogs are sitting by the door"), repetition, actor (odd male, even
female). Files sit in ``Actor_XX/`` folders (any depth under ``--root``).

One row per recording (all fields but the modality): the video is the audio-video clip (or the
video-only one), the audio the audio-only wav when present. RAVDESS has no official split; the
split is by actor so no speaker is in two splits: actors 1-20 train, 21-22 val, 23-24 test.
"""

from __future__ import annotations

import re
from pathlib import Path

from affect_llm.data.adapters.common import BuildResult, require_dir
from affect_llm.data.manifest import ManifestRow

EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
NAME_RE = re.compile(r"^(0[123])-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)$")


def actor_split(actor: int) -> str:
    """Speaker-independent split by actor number."""
    if actor <= 20:
        return "train"
    return "val" if actor <= 22 else "test"


def build(root: Path) -> BuildResult:
    """Rows from every RAVDESS-named ``.wav``/``.mp4`` under ``root``.

    Raises:
        FileNotFoundError: If no file follows the naming scheme.
    """
    root = require_dir(root, "ravdess")
    result = BuildResult()
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in (".wav", ".mp4") or not path.is_file():
            continue
        match = NAME_RE.match(path.stem)
        if match is None:
            result.skip(str(path), "file name does not follow MM-VV-EE-II-SS-RR-AA")
            continue
        key = "-".join(match.groups()[1:])
        groups.setdefault(key, {})[match.group(1)] = path
    if not groups:
        raise FileNotFoundError(f"ravdess: no file named like 03-01-06-01-02-01-12.wav under {root}")
    for key, files in sorted(groups.items()):
        vocal, emotion, intensity, statement, repetition, actor = key.split("-")
        video = files.get("01") or files.get("02")
        audio = files.get("03")
        result.rows.append(
            ManifestRow(
                id=f"ravdess/{key}",
                video=str(video) if video else None,
                audio=str(audio) if audio else None,
                transcript=STATEMENTS[statement],
                labels=[EMOTIONS[emotion]],
                split=actor_split(int(actor)),
                source="ravdess",
                extra={
                    "speaker": f"actor{actor}",
                    "gender": "male" if int(actor) % 2 else "female",
                    "vocal_channel": "speech" if vocal == "01" else "song",
                    "intensity": "normal" if intensity == "01" else "strong",
                    "repetition": int(repetition),
                },
            )
        )
    return result
