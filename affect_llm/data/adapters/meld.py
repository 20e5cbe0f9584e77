"""MELD (Poria et al., 2019): utterances from *Friends* with emotion and sentiment labels.

Published layout (``--root`` is the folder holding the CSVs and ``MELD.Raw`` or the clip folders)::

    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    .../train_splits/dia{Dialogue_ID}_utt{Utterance_ID}.mp4
    .../dev_splits_complete/dia{d}_utt{u}.mp4
    .../output_repeated_splits_test/dia{d}_utt{u}.mp4

CSV columns: ``Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
Season, Episode, StartTime, EndTime``. Clips are looked up by file name inside the folder of
their split (the three splits reuse the same ``dia/utt`` numbers). Users of the published test
archive report clips there named ``final_videos_testdia{d}_utt{u}.mp4``; such a file is used when the
plain name is absent, and never in place of a plain one.
"""

from __future__ import annotations

from pathlib import Path

from affect_llm.data.adapters.common import (
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

SPLITS = {
    "train": ("train_sent_emo.csv", ("train_splits", "train")),
    "val": ("dev_sent_emo.csv", ("dev_splits_complete", "dev_splits", "dev")),
    "test": ("test_sent_emo.csv", ("output_repeated_splits_test", "test_splits", "test")),
}
TEST_PREFIX = "final_videos_test"
COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")


def _clip_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        hits = sorted(p for p in root.rglob(name) if p.is_dir())
        if hits:
            return hits[0]
    return None


def build(root: Path) -> BuildResult:
    """Rows for every utterance of every split whose CSV exists under ``root``.

    Raises:
        FileNotFoundError: If ``root`` holds none of the three CSVs.
    """
    root = require_dir(root, "meld")
    result = BuildResult()
    found_any = False
    for split, (csv_name, dir_names) in SPLITS.items():
        csv_path = find_one(root, [csv_name])
        if csv_path is None:
            continue
        found_any = True
        clip_dir = _clip_dir(root, dir_names)
        clips = index_files(clip_dir, VIDEO_EXTENSIONS) if clip_dir is not None else {}
        default_dir = clip_dir or root / dir_names[0]
        for line, rec in read_csv_rows(csv_path, result):
            require_columns(csv_path, rec, COLUMNS)
            empty = [name for name in ("Dialogue_ID", "Utterance_ID") if not rec[name]]
            if empty:
                result.skip(f"{csv_path.name}:{line}", f"field(s) {empty} empty: the clip cannot be named")
                continue
            stem = f"dia{rec['Dialogue_ID']}_utt{rec['Utterance_ID']}"
            video = clips.get(stem) or clips.get(f"{TEST_PREFIX}{stem}") or default_dir / f"{stem}.mp4"
            row = ManifestRow(
                id=f"meld/{split}/{stem}",
                video=str(video),
                transcript=rec["Utterance"] or None,
                labels=[rec["Emotion"].lower()] if rec["Emotion"] else [],
                split=split,
                source="meld",
                extra={
                    "speaker": rec["Speaker"],
                    "sentiment": rec["Sentiment"].lower(),
                    "dialogue_id": rec["Dialogue_ID"],
                    "utterance_id": rec["Utterance_ID"],
                    "annotation": f"{csv_path.name}:{line}",
                },
            )
            check_media(row, result)
            result.rows.append(row)
    if not found_any:
        raise FileNotFoundError(f"meld: none of {[v[0] for v in SPLITS.values()]} under {root}")
    return result
