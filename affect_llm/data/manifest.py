"""The manifest: one JSON object per line describing one sample.

Schema. Only ``id`` is required; every other key may be left out and then takes its default.
Keys outside this table are refused (put them under ``extra``).

| key | type | default | meaning |
|---|---|---|---|
| ``id`` | str, unique | (required) | sample identity, used by caches and result rows |
| ``video`` / ``audio`` / ``image`` | str or null | null | media path, relative to the manifest's folder or absolute |
| ``transcript`` | str or null | null | what is said |
| ``labels`` | list[str] | ``[]`` | open-vocabulary emotion words (may be empty) |
| ``explanation`` | str or null | null | free-text reasoning about the emotion |
| ``valence`` / ``arousal`` | number or null | null | dimensional ratings |
| ``split`` | str or null | null | ``train`` / ``val`` / ``test`` or any other name; a row without one is never trained on |
| ``source`` | str or null | null | dataset the row comes from |
| ``extra`` | object | ``{}`` | anything else (speaker, dialogue id, ...) |

One key of ``extra`` is read by the framework: ``extra.channels``, the evidence channels the clip
really carries (``audio`` a voice, ``video`` a face, ``text`` words). A medium the list leaves out
is not given to the model (a sound track of room noise is not a voice), and evaluation counts an
answer that describes it.

:class:`ManifestReader` streams a file: it yields the good rows and records each refused line (invalid
UTF-8 or JSON, schema violation, a repeated id: the first row of an id is kept) as an
:class:`~affect_llm.data.issues.Issue` with its line, so one bad line in 100,000 costs that line.
With ``strict=True`` (and in :func:`load_manifest`) the first refused line raises :class:`ManifestError`
naming the file, the line and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affect_llm.data.issues import SEVERITY, Issue
from affect_llm.fileio import atomic_write_bytes

MediaField = Literal["video", "audio", "image"]
MEDIA_FIELDS: tuple[str, ...] = ("video", "audio", "image")
# Every key of a row, in the order rows are written.
KEYS: tuple[str, ...] = (
    "id", "video", "audio", "image", "transcript", "labels", "explanation", "valence", "arousal", "split",
    "source", "extra",
)
REQUIRED_KEYS: tuple[str, ...] = ("id",)
ALL_KEYS: frozenset[str] = frozenset(KEYS)


class ManifestError(ValueError):
    """A manifest row that does not follow the schema.

    Attributes:
        path: The manifest file.
        line: 1-based line number (0 when the error concerns the whole file).
        field: The offending key, or None when the row as a whole is bad.
        reason: What is wrong.
        row_id: The row's id, when it could be read.
        code: ``manifest`` or ``duplicate_id`` (keys of :data:`affect_llm.data.issues.SEVERITY`).
    """

    def __init__(self, path: str | Path | None, line: int, field: str | None, reason: str,
                 row_id: str | None = None, code: str = "manifest") -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = reason
        self.row_id = row_id
        self.code = code
        where = self.path.name if self.path is not None else "<manifest>"
        where = f"{where}:{line}" if line else where
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{reason}")

    def to_issue(self) -> Issue:
        """The error as a recorded issue (line and id kept)."""
        return Issue(self.code, self.field, self.reason, SEVERITY[self.code], None, self.line, self.row_id)


# Evidence channels a row may record in ``extra.channels``: what the clip really carries (a voice,
# a face, words), which can be less than its media files hold (a sound track of room noise).
CHANNEL_KEYS: tuple[str, ...] = ("audio", "video", "text")


def recorded_channels(extra: Any, row_id: Any) -> tuple[str, ...] | None:
    """The channels ``extra.channels`` lists, in :data:`CHANNEL_KEYS` order; None when it lists none.

    Raises:
        ValueError: If ``extra.channels`` is not a list of names among :data:`CHANNEL_KEYS` (names the row).
    """
    listed = extra.get("channels") if isinstance(extra, dict) else None
    if listed is None:
        return None
    if not isinstance(listed, list) or any(c not in CHANNEL_KEYS for c in listed):
        raise ValueError(f"row {row_id!r}: field 'extra.channels' must list names among {CHANNEL_KEYS}, got {listed!r}")
    return tuple(c for c in CHANNEL_KEYS if c in listed)


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
    split: str | None = None
    source: str | None = None
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

    @property
    def channels(self) -> tuple[str, ...] | None:
        """Channels the dataset records the clip as carrying (``extra.channels``); None when unrecorded.

        Raises:
            ValueError: If ``extra.channels`` is malformed (names the row and the field).
        """
        return recorded_channels(self.extra, self.id)

    @property
    def words(self) -> str | None:
        """The transcript the prompt gives: None when ``extra.channels`` records the clip without words.

        The recorded channels are what the evaluation holds an answer to, so a transcript the row
        keeps for reference (``channels`` without ``text``) is not shown to the model either.
        """
        channels = self.channels
        return None if channels is not None and "text" not in channels else self.transcript

    @property
    def transcript_recognised(self) -> bool:
        """Whether the words come from speech recognition (``extra.transcript_source: asr:...``)."""
        source = self.extra.get("transcript_source") if isinstance(self.extra, dict) else None
        return isinstance(source, str) and source.startswith("asr:")

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


# (manifest, line, row id) of the row being read, for its errors.
_Where = tuple[Path | None, int, str | None]


def _error(where: _Where, key: str | None, reason: str) -> ManifestError:
    return ManifestError(where[0], where[1], key, reason, where[2])


def _optional_str(obj: dict[str, Any], key: str, where: _Where) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _error(where, key, f"expected a string or null, got {type(value).__name__}")
    if isinstance(value, str) and key in MEDIA_FIELDS + ("split", "source") and not value.strip():
        hint = " (use null for absent media)" if key in MEDIA_FIELDS else " (use null, or leave the key out)"
        raise _error(where, key, f"empty string{hint}")
    return value


def _blank_is_empty(transcript: str | None) -> str | None:
    """A transcript of only spaces says nothing: read as ``""``, the row without words, like an empty one."""
    return "" if transcript is not None and not transcript.strip() else transcript


def _optional_number(obj: dict[str, Any], key: str, where: _Where) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int subclass; a rating of `true` is a bug upstream, not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(where, key, f"expected a number or null, got {type(value).__name__}")
    if not math.isfinite(value):
        raise _error(where, key, f"expected a finite number, got {value}")
    return float(value)


def row_from_dict(obj: Any, *, path: str | Path | None = None, line: int = 0) -> ManifestRow:
    """Validate one decoded JSON object and build a :class:`ManifestRow` (absent keys take their defaults).

    Args:
        obj: The decoded JSON value of one line.
        path: The manifest file, for error messages and relative media paths.
        line: 1-based line number, for error messages.

    Returns:
        The row.

    Raises:
        ManifestError: On a missing id, an unknown key or a value of the wrong type.
    """
    mpath = Path(path) if path is not None else None
    if not isinstance(obj, dict):
        raise ManifestError(mpath, line, None, f"expected a JSON object, got {type(obj).__name__}")
    row_id = obj.get("id")
    known_id = row_id if isinstance(row_id, str) and row_id else None
    where = (mpath, line, known_id)
    if "id" not in obj:
        raise ManifestError(mpath, line, "id", "missing required key")
    if known_id is None:
        raise ManifestError(mpath, line, "id", f"expected a non-empty string, got {json.dumps(row_id)[:40]}")
    unknown = sorted(set(obj) - ALL_KEYS)
    if unknown:
        raise _error(where, unknown[0], "unknown key (put extra information under 'extra')")
    labels = obj.get("labels") if obj.get("labels") is not None else []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        got = type(labels).__name__ if not isinstance(labels, list) else "a list with non-strings"
        raise _error(where, "labels", f"expected a list of strings, got {got}")
    extra = obj.get("extra") if obj.get("extra") is not None else {}
    if not isinstance(extra, dict):
        raise _error(where, "extra", f"expected an object, got {type(extra).__name__}")
    try:
        recorded_channels(extra, known_id)  # read by training and explain: refused here, not there
    except ValueError as exc:
        raise _error(where, "extra.channels", str(exc).split("'extra.channels' ", 1)[-1]) from None
    return ManifestRow(
        id=known_id,
        video=_optional_str(obj, "video", where),
        audio=_optional_str(obj, "audio", where),
        image=_optional_str(obj, "image", where),
        transcript=_blank_is_empty(_optional_str(obj, "transcript", where)),
        labels=list(labels),
        explanation=_optional_str(obj, "explanation", where),
        valence=_optional_number(obj, "valence", where),
        arousal=_optional_number(obj, "arousal", where),
        split=_optional_str(obj, "split", where),
        source=_optional_str(obj, "source", where),
        extra=dict(extra),
        line=line,
        manifest_path=mpath,
    )


def _decode_json(raw: bytes, path: Path | None, line: int) -> Any:
    """The JSON value of one line; a non-UTF-8 byte is reported against the field that holds it."""
    raw = raw.rstrip(b"\r\n")  # else a line cut short is reported at "column 1" of a line after it
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(path, line, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        utf8_error = exc
    # Decoded with the bad bytes kept as surrogates, the line still shows which field holds them.
    try:
        obj = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:
        raise ManifestError(path, line, None, f"not valid UTF-8 ({utf8_error.reason})") from utf8_error
    row_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
    fields = [k for k, v in obj.items() if isinstance(v, str) and _has_surrogate(v)] if isinstance(obj, dict) else []
    if row_id is not None and _has_surrogate(row_id):
        row_id = None
    raise ManifestError(path, line, fields[0] if fields else None, "not valid UTF-8 text", row_id)


UTF8_BOM = b"\xef\xbb\xbf"


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def parse_line(text: str | bytes, *, path: str | Path | None = None, line: int = 0) -> ManifestRow | None:
    """Parse one manifest line; blank lines give None.

    Raises:
        ManifestError: On invalid UTF-8 or JSON, or a schema violation.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if not raw.strip():
        return None
    mpath = Path(path) if path is not None else None
    return row_from_dict(_decode_json(raw, mpath, line), path=mpath, line=line)


class ManifestReader:
    """Stream the rows of a manifest, recording (or, when strict, raising on) every refused line.

    Iterate once; afterwards :attr:`issues` holds one :class:`~affect_llm.data.issues.Issue` per refused
    line (its line, id when readable, field and reason) and :attr:`num_lines` counts non-blank lines.

    Args:
        path: The manifest file.
        strict: Raise :class:`ManifestError` at the first refused line instead of recording it.

    Raises:
        FileNotFoundError: If the file does not exist (on construction).
    """

    def __init__(self, path: str | Path, *, strict: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            kind = "is a directory, not a manifest file" if self.path.is_dir() else "not found"
            raise FileNotFoundError(f"manifest {kind}: {self.path}")
        self.strict = strict
        self.issues: list[Issue] = []
        self.num_lines = 0
        self._seen: dict[str, int] = {}

    def __iter__(self) -> Iterator[ManifestRow]:
        with self.path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if line_no == 1:
                    raw = raw.removeprefix(UTF8_BOM)  # editors on Windows save one at the start
                if not raw.strip():
                    continue
                self.num_lines += 1
                try:
                    row = self._row(raw, line_no)
                except ManifestError as exc:
                    if self.strict:
                        raise
                    self.issues.append(exc.to_issue())
                    continue
                yield row

    def _row(self, raw: bytes, line_no: int) -> ManifestRow:
        row = parse_line(raw, path=self.path, line=line_no)
        assert row is not None  # blank lines are skipped by the caller
        first = self._seen.setdefault(row.id, line_no)
        if first != line_no:
            raise ManifestError(self.path, line_no, "id", f"duplicate id {row.id!r} (first on line {first}, "
                                "which is used)", row.id, code="duplicate_id")
        return row


def load_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a JSONL manifest, strictly.

    Args:
        path: The manifest file.

    Returns:
        The rows in file order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ManifestError: On the first bad line (invalid UTF-8 or JSON, schema violation, duplicate id).
    """
    return list(ManifestReader(path, strict=True))


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

