"""MER-Caption+ and OV-MERD (formerly EMER): open-vocabulary labels and free-text explanations.

Published layout (the MER2025 release) under ``--root``::

    track2_train_mercaptionplus.csv   name, openset   (e.g. "['happy', 'relieved']")
    track3_train_mercaptionplus.csv   name, reason    (multimodal description)
    track2_train_ovmerd.csv / track3_train_ovmerd.csv   the same for OV-MERD
    subtitle_chieng.csv               name, chinese, english
    video/<name>.mp4   audio/<name>.wav

A sample needs a label file entry or a description; either part may be missing (recorded in
``extra``). All rows are ``train``: the release has no held-out labels.
"""

from __future__ import annotations

import ast
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
from affect_llm.data.adapters.mer import read_subtitles
from affect_llm.data.manifest import ManifestRow

SUBSETS = {"mercaptionplus": "mer-caption+", "ovmerd": "ov-merd"}


def parse_openset(text: str) -> list[str]:
    """``"['happy', 'relieved']"`` or ``"happy, relieved"`` -> ``["happy", "relieved"]``."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list):
            return [str(v).strip().lower() for v in value if str(v).strip()]
        text = text.strip("[]")
    return [w.strip().strip("'\"").lower() for w in text.split(",") if w.strip().strip("'\"")]


def _read_column(path: Path | None, column: str, result: BuildResult) -> dict[str, str]:
    if path is None:
        return {}
    found = {}
    for _, rec in read_csv_rows(path, result):
        require_columns(path, rec, ("name", column))
        found[rec["name"]] = rec[column]
    return found


def build(root: Path, *, subsets: tuple[str, ...] = ("mercaptionplus", "ovmerd")) -> BuildResult:
    """Rows for every sample with open labels or a description.

    Raises:
        FileNotFoundError: If none of the subsets' CSVs exists.
        ValueError: On an unknown subset name.
    """
    root = require_dir(root, "mercaption")
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"mercaption: unknown subset(s) {unknown}; choose from {sorted(SUBSETS)}")
    videos = index_files(root, VIDEO_EXTENSIONS)
    audios = index_files(root, AUDIO_EXTENSIONS)
    result = BuildResult()
    subtitles = read_subtitles(root, result)
    found_any = False
    for subset in subsets:
        labels = _read_column(find_one(root, [f"track2_train_{subset}.csv"]), "openset", result)
        reasons = _read_column(find_one(root, [f"track3_train_{subset}.csv"]), "reason", result)
        found_any = found_any or bool(labels or reasons)
        for name in sorted(set(labels) | set(reasons)):
            row = ManifestRow(
                id=f"{subset}/{name}",
                video=str(videos.get(name, root / "video" / f"{name}.mp4")),
                audio=str(audios[name]) if name in audios else None,
                transcript=subtitles.get(name),
                labels=parse_openset(labels.get(name, "")),
                explanation=reasons.get(name) or None,
                split="train",
                source=SUBSETS[subset],
                extra={"name": name, "has_labels": name in labels, "has_explanation": name in reasons},
            )
            check_media(row, result)
            result.rows.append(row)
    if not found_any:
        raise FileNotFoundError(f"mercaption: no track2_/track3_train_<subset>.csv under {root}")
    return result
