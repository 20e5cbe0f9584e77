"""The manifest: one JSON object per line describing one sample.

Schema (every key is required except ``extra``; absent media are ``null``):

| key | type | meaning |
|---|---|---|
| ``id`` | str, unique | sample identity, used by caches and result rows |
| ``video`` / ``audio`` / ``image`` | str or null | media path, relative to the manifest's folder or absolute |
| ``transcript`` | str or null | what is said |
| ``labels`` | list[str] | open-vocabulary emotion words (may be empty) |
| ``explanation`` | str or null | free-text reasoning about the emotion |
| ``valence`` / ``arousal`` | number or null | dimensional ratings |
| ``split`` | str | ``train`` / ``val`` / ``test`` or any other name |
| ``source`` | str | dataset the row comes from |
| ``extra`` | object | anything else (speaker, dialogue id, ...) |

``load_manifest`` is strict: the first bad row raises :class:`ManifestError` naming the file, the
line and the field. The data check (:mod:`affect_llm.data.check`) instead collects every error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affect_llm.fileio import atomic_write_bytes

MediaField = Literal["video", "audio", "image"]
MEDIA_FIELDS: tuple[str, ...] = ("video", "audio", "image")
REQUIRED_KEYS: tuple[str, ...] = (
    "id",
    "video",
    "audio",
    "image",
    "transcript",
    "labels",
    "explanation",
    "valence",
    "arousal",
    "split",
    "source",
)
OPTIONAL_KEYS: tuple[str, ...] = ("extra",)
ALL_KEYS: frozenset[str] = frozenset(REQUIRED_KEYS + OPTIONAL_KEYS)


class ManifestError(ValueError):
    """A manifest row that does not follow the schema.

    Attributes:
        path: The manifest file.
        line: 1-based line number (0 when the error concerns the whole file).
        field: The offending key, or None when the row as a whole is bad.
        reason: What is wrong.
    """

    def __init__(self, path: str | Path | None, line: int, field: str | None, reason: str) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = reason
        where = self.path.name if self.path is not None else "<manifest>"
        where = f"{where}:{line}" if line else where
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{reason}")


@dataclass
class ManifestRow:
    """One sample of a manifest. See the module docstring for the meaning of each field."""

    id: str
    video: str | None = None
    audio: str | None = None
    image: str | None = None
    transcript: str | None = None
    labels: list[str] = field(default_factory=list)
    explanation: str | None = None
    valence: float | None = None
    arousal: float | None = None
    split: str = "train"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the row was read from; never serialised.
    line: int = field(default=0, compare=False, repr=False)
    manifest_path: Path | None = field(default=None, compare=False, repr=False)

    def media_path(self, field_name: str) -> Path | None:
        """Resolve a media field to a path.

        Relative paths are taken against the manifest's folder (or the working directory for a
        row built in memory), so a dataset folder can be moved together with its manifest.

        Args:
            field_name: ``"video"``, ``"audio"`` or ``"image"``.

        Returns:
            The path, or None when the row has no such media.

        Raises:
            ValueError: If ``field_name`` is not a media field.
        """
        if field_name not in MEDIA_FIELDS:
            raise ValueError(f"media_path: field {field_name!r} is not one of {MEDIA_FIELDS}")
        value = getattr(self, field_name)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.manifest_path is not None:
            path = Path(self.manifest_path).parent / path
        return path

    def modalities(self) -> tuple[str, ...]:
        """Media fields that are set on this row, in schema order."""
        return tuple(name for name in MEDIA_FIELDS if getattr(self, name) is not None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form written to a manifest line (no ``line``/``manifest_path``)."""
        return {
            "id": self.id,
            "video": self.video,
            "audio": self.audio,
            "image": self.image,
            "transcript": self.transcript,
            "labels": list(self.labels),
            "explanation": self.explanation,
            "valence": self.valence,
            "arousal": self.arousal,
            "split": self.split,
            "source": self.source,
            "extra": dict(self.extra),
        }


def _check_optional_str(obj: dict[str, Any], key: str, path: Path | None, line: int) -> str | None:
    value = obj[key]
    if value is not None and not isinstance(value, str):
        raise ManifestError(path, line, key, f"expected a string or null, got {type(value).__name__}")
    if isinstance(value, str) and key in MEDIA_FIELDS and not value.strip():
        raise ManifestError(path, line, key, "empty path (use null for absent media)")
    return value


def _check_optional_number(obj: dict[str, Any], key: str, path: Path | None, line: int) -> float | None:
    value = obj[key]
    if value is None:
        return None
    # bool is an int subclass; a rating of `true` is a bug upstream, not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(path, line, key, f"expected a number or null, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ManifestError(path, line, key, f"expected a finite number, got {value}")
    return float(value)


def row_from_dict(obj: Any, *, path: str | Path | None = None, line: int = 0) -> ManifestRow:
    """Validate one decoded JSON object and build a :class:`ManifestRow`.

    Args:
        obj: The decoded JSON value of one line.
        path: The manifest file, for error messages and relative media paths.
        line: 1-based line number, for error messages.

    Returns:
        The row.

    Raises:
        ManifestError: On a missing or unknown key or a value of the wrong type.
    """
    mpath = Path(path) if path is not None else None
    if not isinstance(obj, dict):
        raise ManifestError(mpath, line, None, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - ALL_KEYS)
    if unknown:
        raise ManifestError(mpath, line, unknown[0], "unknown key (put extra information under 'extra')")
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise ManifestError(mpath, line, key, "missing required key")
    row_id = obj["id"]
    if not isinstance(row_id, str) or not row_id:
        raise ManifestError(mpath, line, "id", "expected a non-empty string")
    labels = obj["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ManifestError(mpath, line, "labels", "expected a list of strings")
    for key in ("split", "source"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise ManifestError(mpath, line, key, "expected a non-empty string")
    extra = obj.get("extra", {})
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise ManifestError(mpath, line, "extra", f"expected an object, got {type(extra).__name__}")
    return ManifestRow(
        id=row_id,
        video=_check_optional_str(obj, "video", mpath, line),
        audio=_check_optional_str(obj, "audio", mpath, line),
        image=_check_optional_str(obj, "image", mpath, line),
        transcript=_check_optional_str(obj, "transcript", mpath, line),
        labels=list(labels),
        explanation=_check_optional_str(obj, "explanation", mpath, line),
        valence=_check_optional_number(obj, "valence", mpath, line),
        arousal=_check_optional_number(obj, "arousal", mpath, line),
        split=obj["split"],
        source=obj["source"],
        extra=dict(extra),
        line=line,
        manifest_path=mpath,
    )


def parse_line(text: str, *, path: str | Path | None = None, line: int = 0) -> ManifestRow | None:
    """Parse one manifest line; blank lines give None.

    Raises:
        ManifestError: On invalid JSON or a schema violation.
    """
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(path, line, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
    return row_from_dict(obj, path=path, line=line)


def load_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a JSONL manifest.

    Args:
        path: The manifest file.

    Returns:
        The rows in file order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ManifestError: On the first bad line (invalid UTF-8 or JSON, schema violation, duplicate id).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(path, line_no, None, f"not valid UTF-8 ({exc.reason})") from exc
            row = parse_line(text, path=path, line=line_no)
            if row is None:
                continue
            if row.id in seen:
                raise ManifestError(
                    path, line_no, "id", f"duplicate id {row.id!r} (first on line {seen[row.id]})"
                )
            seen[row.id] = line_no
            rows.append(row)
    return rows


def write_manifest(rows: Iterable[ManifestRow | dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSONL atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        rows: Rows or already-serialised dicts (validated through :func:`row_from_dict`).
        path: Destination; parent folders are created.

    Returns:
        The destination path.

    Raises:
        ManifestError: If a row is invalid or ids repeat.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    lines: list[str] = []
    for index, row in enumerate(rows, start=1):
        if isinstance(row, dict):
            row = row_from_dict(row, path=path, line=index)
        if row.id in seen:
            raise ManifestError(path, index, "id", f"duplicate id {row.id!r}")
        seen.add(row.id)
        lines.append(json.dumps(row.to_dict(), ensure_ascii=False, sort_keys=False))
    return atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))

