"""What every dataset adapter shares: the build result, media lookup and CSV reading."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from affect_llm.data.manifest import MEDIA_FIELDS, ManifestRow, write_manifest

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg")
# C1 control characters (U+0080-U+009F) are Windows-1252 punctuation that went through a Latin-1
# decoder: curly quotes, dashes, ellipses. MELD's published CSVs hold them in about a quarter of
# the utterances ("company\x92s"). Each goes back to its Windows-1252 character; the five codes
# that set leaves undefined are dropped, and a no-break space becomes a space.
_WINDOWS_1252_PUNCTUATION = {
    code: bytes([code]).decode("cp1252", errors="ignore") or None for code in range(0x80, 0xA0)
} | {0xA0: " "}


@dataclass
class MissingMedia:
    """A medium an annotation refers to that is not on disk."""

    id: str
    field: str
    path: str


@dataclass
class BuildResult:
    """Rows built by an adapter, with absolute media paths, and what it could not use.

    Attributes:
        rows: One row per annotated sample.
        missing: Media referenced by an annotation but absent.
        skipped: Annotations that gave no row, each ``{"where": ..., "reason": ...}``.
    """

    rows: list[ManifestRow] = field(default_factory=list)
    missing: list[MissingMedia] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append({"where": where, "reason": reason})


@dataclass
class BuildSummary:
    """What ``prepare`` wrote; saved as JSON beside the manifest."""

    dataset: str
    root: str
    manifest: str
    num_rows: int
    splits: dict[str, int]
    labels: dict[str, int]
    missing: list[dict[str, str]]
    skipped: list[dict[str, str]]
    dropped_for_missing_media: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_dir(root: Path, dataset: str) -> Path:
    """The dataset root, or FileNotFoundError naming the dataset."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset root not found: {root}")
    return root


def index_files(root: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """Map file stem -> path for every file under ``root`` with one of the extensions.

    When a stem appears twice the first in sorted order wins, so the result is deterministic.
    """
    wanted = tuple(e.lower() for e in extensions)
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in wanted and path.is_file():
            found.setdefault(path.stem, path)
    return found


def find_one(root: Path, patterns: Iterable[str]) -> Path | None:
    """The first file under ``root`` matching one of the glob patterns (tried in order)."""
    for pattern in patterns:
        hits = sorted(root.rglob(pattern))
        if hits:
            return hits[0]
    return None


def repair_text(text: str) -> str:
    """``text`` with Windows-1252 punctuation that was decoded as Latin-1 put back (see above)."""
    return text.translate(_WINDOWS_1252_PUNCTUATION)


def read_csv_rows(path: Path, result: BuildResult | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` for each data row of a CSV (UTF-8, BOM tolerated), cells stripped and
    :func:`repair_text`-ed.

    A row with more or fewer cells than the header has columns (an unquoted comma, a line cut
    short) is recorded in ``result.skipped`` with its line and left out; without ``result`` it is
    an error.

    Raises:
        ValueError: If the file is not UTF-8, naming the line and column where decoding failed; a
            row of the wrong width when no ``result`` records it.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Decoded whole, so the position is exact (a streamed reader knows only its last chunk).
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ValueError(f"{path}: line {line}, byte {column}: not valid UTF-8 ({exc.reason}); "
                         "save the file as UTF-8") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        columns = len(reader.fieldnames or ())
        # DictReader puts surplus cells in a list under the key None and fills absent ones with None.
        width = columns + len(row.get(None) or ()) - sum(v is None for v in row.values())
        if width != columns:
            problem = f"{width} cells where the header has {columns} columns (an unquoted comma, or a line cut short)"
            if result is None:
                raise ValueError(f"{path}:{reader.line_num}: {problem}")
            result.skip(f"{path.name}:{reader.line_num}", problem)
            continue
        yield reader.line_num, {k.strip(): repair_text(v.strip()).strip() for k, v in row.items()}


def require_columns(path: Path, row: dict[str, str], columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(row)}")


def check_media(row: ManifestRow, result: BuildResult) -> bool:
    """Record every medium of ``row`` that is not on disk; True when all exist."""
    ok = True
    for name in MEDIA_FIELDS:
        path = row.media_path(name)
        if path is not None and not _is_file(path):
            result.missing.append(MissingMedia(row.id, name, str(path)))
            ok = False
    return ok


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, an I/O error: not usable either
        return False


def drop_repeated_ids(result: BuildResult) -> None:
    """Keep the first row of each id; record the others (a manifest's ids are unique). A second
    call finds nothing to drop."""
    first: dict[str, ManifestRow] = {}
    kept = []
    for row in result.rows:
        if row.id in first:
            # Named by its annotation line where the adapter records one, so the line can be mended.
            kept_from = _annotation(first[row.id])
            result.skip(_annotation(row) or f"id {row.id}",
                        f"duplicate id {row.id} (the first row with it{f', {kept_from},' if kept_from else ''} is kept)")
        else:
            first[row.id] = row
            kept.append(row)
    result.rows = kept


def _annotation(row: ManifestRow) -> str | None:
    """The ``file:line`` a row was built from, where its adapter records it (``extra.annotation``)."""
    where = row.extra.get("annotation")
    return where if isinstance(where, str) else None


def write_prepared(
    dataset: str, root: Path, result: BuildResult, out: Path, *, keep_missing: bool = False
) -> BuildSummary:
    """Write the manifest (paths relative to its folder) and ``<out>.summary.json``.

    Rows with missing media are left out of the manifest unless ``keep_missing`` (then the
    data check quarantines them); either way each is listed in the summary.
    """
    out = Path(out)
    drop_repeated_ids(result)
    missing_ids = {m.id for m in result.missing}
    kept = [r for r in result.rows if keep_missing or r.id not in missing_ids]
    base = out.parent.resolve()
    written = []
    for row in kept:
        data = row.to_dict()
        for name in MEDIA_FIELDS:
            path = row.media_path(name)
            if path is not None:
                data[name] = os.path.relpath(path.resolve(), base)
        written.append(data)
    write_manifest(written, out)
    splits: dict[str, int] = {}
    labels: dict[str, int] = {}
    for row in kept:
        splits[row.split] = splits.get(row.split, 0) + 1
        for label in row.labels:
            labels[label] = labels.get(label, 0) + 1
    summary = BuildSummary(
        dataset=dataset,
        root=str(root),
        manifest=str(out),
        num_rows=len(kept),
        splits=dict(sorted(splits.items())),
        labels=dict(sorted(labels.items())),
        missing=[asdict(m) for m in result.missing],
        skipped=result.skipped,
        dropped_for_missing_media=len(result.rows) - len(kept),
    )
    summary_path = out.with_name(out.name + ".summary.json")
    summary_path.write_text(
        json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return summary
