"""MER2023 and MER2024 (Lian et al.): Chinese TV clips with discrete and valence labels.

Published layout under ``--root``: label CSVs with columns ``name, discrete[, valence]``,
clips ``<name>.mp4``/``.avi`` in a video folder, optional ``<name>.wav`` in an audio folder, and
optionally a subtitle CSV (``name, chinese, english``). Label files looked for:

- MER2023: ``train-label.csv`` (train), ``test1-label.csv`` / ``test2-label.csv`` /
  ``test3-label.csv`` (splits ``test1`` ... ``test3``);
- MER2024: ``label-disdim.csv`` or ``track1_train_disdim.csv`` (train), ``test1-label.csv``,
  ``test2-label.csv``.

Other releases: pass ``labels={"split": path}``. Valence is given on [-5, 5]; the manifest
stores it on [-1, 1] and keeps the raw value in ``extra``.
"""

from __future__ import annotations

import math
from pathlib import Path

from affect_llm.data.adapters.common import (
    AUDIO_EXTENSIONS,
    VIDEO_EXTENSIONS,
    BuildResult,
    check_media,
    find_one,
    index_files,
    read_csv_rows,
    require_columns,
    require_dir,
)
from affect_llm.data.manifest import ManifestRow

LABEL_FILES = {
    "mer2023": {
        "train": ("train-label.csv",),
        "test1": ("test1-label.csv",),
        "test2": ("test2-label.csv",),
        "test3": ("test3-label.csv",),
    },
    "mer2024": {
        "train": ("label-disdim.csv", "track1_train_disdim.csv"),
        "test1": ("test1-label.csv",),
        "test2": ("test2-label.csv",),
    },
}
# MER2024 publishes its subtitles as label-transcription.csv (name, chinese, english).
SUBTITLE_FILES = ("subtitle_chieng.csv", "label-transcription.csv", "transcription*.csv", "*subtitle*.csv")
VALENCE_SCALE = 5.0


def read_subtitles(root: Path, result: BuildResult) -> dict[str, str]:
    """name -> English subtitle (Chinese when the English one is empty), if a subtitle CSV exists;
    its malformed lines are recorded in ``result``."""
    path = find_one(root, SUBTITLE_FILES)
    if path is None:
        return {}
    found = {}
    for _, rec in read_csv_rows(path, result):
        text = rec.get("english") or rec.get("sentence") or rec.get("chinese") or ""
        if rec.get("name") and text:
            found[rec["name"]] = text
    return found


def build(
    root: Path, *, dataset: str = "mer2023", labels: dict[str, str | Path] | None = None
) -> BuildResult:
    """Rows for every labelled clip.

    Args:
        root: Dataset folder.
        dataset: ``mer2023`` or ``mer2024`` (which label files to look for).
        labels: Explicit ``{split: csv}`` overriding the search.

    Raises:
        FileNotFoundError: If no label file is found.
    """
    root = require_dir(root, dataset)
    if labels:
        label_paths = {split: Path(p) if Path(p).is_absolute() else root / p for split, p in labels.items()}
    else:
        label_paths = {
            split: path
            for split, names in LABEL_FILES[dataset].items()
            if (path := find_one(root, names)) is not None
        }
    if not label_paths:
        raise FileNotFoundError(f"{dataset}: no label CSV ({LABEL_FILES[dataset]}) under {root}")
    videos = index_files(root, VIDEO_EXTENSIONS)
    audios = index_files(root, AUDIO_EXTENSIONS)
    result = BuildResult()
    subtitles = read_subtitles(root, result)
    for split, csv_path in label_paths.items():
        if not csv_path.is_file():
            raise FileNotFoundError(f"{dataset}: label file for split {split!r} not found: {csv_path}")
        for line, rec in read_csv_rows(csv_path, result):
            require_columns(csv_path, rec, ("name", "discrete"))
            name = rec["name"]
            if not name:
                result.skip(f"{csv_path.name}:{line}", "field 'name' is empty: the clip cannot be found")
                continue
            raw_valence = rec.get("valence", "")
            try:
                valence = _valence(raw_valence)
            except ValueError:
                result.skip(f"{csv_path.name}:{line}", f"field 'valence' holds {raw_valence!r}, not a number")
                continue
            row = ManifestRow(
                id=f"{dataset}/{name}",
                video=str(videos.get(name, root / "video" / f"{name}.mp4")),
                audio=str(audios[name]) if name in audios else None,
                transcript=subtitles.get(name),
                labels=[rec["discrete"].lower()] if rec["discrete"] else [],
                valence=valence,
                split=split,
                source=dataset,
                extra={
                    "name": name,
                    "raw_valence": raw_valence or None,
                    "annotation": f"{csv_path.name}:{line}",
                },
            )
            check_media(row, result)
            result.rows.append(row)
    return result


def _valence(raw: str) -> float | None:
    """The published rating on [-5, 5] as [-1, 1]; empty, ``nan`` and -10 (unrated) give None.

    Raises:
        ValueError: If ``raw`` is not a number, or is infinite.
    """
    if raw in ("", "nan", "-10"):
        return None
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value / VALENCE_SCALE
