"""CREMA-D (Cao et al., 2014): 91 actors, 12 sentences, 6 emotions at up to 4 levels.

File names ``{actor}_{sentence}_{emotion}_{level}``, e.g. ``1001_DFA_ANG_XX.wav``; audio in
``AudioWAV/`` and video in ``VideoFlash/`` (``.flv``) or ``VideoMP4/``, any depth under ``--root``.
No official split; by actor: 1001-1073 train, 1074-1082 val, 1083-1091 test.
"""

from __future__ import annotations

import re
from pathlib import Path

from affect_llm.data.adapters.common import VIDEO_EXTENSIONS, BuildResult, require_dir
from affect_llm.data.manifest import ManifestRow

EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified", "X": "unspecified"}
SENTENCES = {
    "IEO": "It's eleven o'clock.",
    "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
# The level is two letters; copies of the corpus taken before it was renamed (late 2022) still hold
# 1040_ITH_SAD_X.wav, read as unspecified like "XX".
NAME_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2}|X)$")


def actor_split(actor: int) -> str:
    """Speaker-independent split by actor number."""
    if actor <= 1073:
        return "train"
    return "val" if actor <= 1082 else "test"


def build(root: Path) -> BuildResult:
    """Rows from every CREMA-D-named audio or video file under ``root``.

    Raises:
        FileNotFoundError: If no file follows the naming scheme.
    """
    root = require_dir(root, "cremad")
    result = BuildResult()
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in (".wav", *VIDEO_EXTENSIONS) or not path.is_file():
            continue
        match = NAME_RE.match(path.stem)
        if match is None or match.group(3) not in EMOTIONS or match.group(2) not in SENTENCES:
            result.skip(str(path), "file name does not follow ACTOR_SENTENCE_EMOTION_LEVEL")
            continue
        kind = "audio" if suffix == ".wav" else "video"
        groups.setdefault(path.stem, {}).setdefault(kind, path)
    if not groups:
        raise FileNotFoundError(f"cremad: no file named like 1001_DFA_ANG_XX.wav under {root}")
    for stem, files in sorted(groups.items()):
        actor, sentence, emotion, level = NAME_RE.match(stem).groups()  # type: ignore[union-attr]
        result.rows.append(
            ManifestRow(
                id=f"cremad/{stem}",
                video=str(files["video"]) if "video" in files else None,
                audio=str(files["audio"]) if "audio" in files else None,
                transcript=SENTENCES[sentence],
                labels=[EMOTIONS[emotion]],
                split=actor_split(int(actor)),
                source="cremad",
                extra={"speaker": actor, "sentence": sentence, "intensity": LEVELS.get(level, level)},
            )
        )
    return result
