"""Any corpus described by one CSV or JSONL annotation file and a column mapping.

``mapping`` maps manifest keys to annotation columns, e.g.
``{"id": "clip", "video": "file", "labels": "emotion", "transcript": "text"}``. Columns not
mapped go to ``extra``. ``labels`` is split on ``labels_sep``; a list is taken as is (a JSON list,
or in a CSV cell a list as JSON or Python writes it). Media paths are relative to ``root``;
``split`` defaults to ``train``.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from affect_llm.data.adapters.common import BuildResult, check_media, read_csv_rows, require_dir
from affect_llm.data.manifest import KEYS, MEDIA_FIELDS, ManifestRow

MAPPABLE = frozenset(KEYS) - {"extra"}


def parse_mapping(text: str) -> dict[str, str]:
    """``"id=clip,video=file"`` -> ``{"id": "clip", "video": "file"}``.

    Raises:
        ValueError: On a malformed pair or a key that is not a manifest field.
    """
    mapping = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, column = pair.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise ValueError(f"generic: mapping entry {pair!r} is not KEY=COLUMN")
        if key.strip() not in MAPPABLE:
            raise ValueError(
                f"generic: {key.strip()!r} is not a manifest field; choose from {sorted(MAPPABLE)}"
            )
        mapping[key.strip()] = column.strip()
    return mapping


def _records(path: Path, result: BuildResult) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of each annotation; a line that is not a JSON object is recorded and skipped."""
    if path.suffix.lower() == ".csv":
        yield from read_csv_rows(path, result)
        return
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                result.skip(f"{path.name}:{line_no}", f"not valid UTF-8 ({exc.reason})")
                continue
            except json.JSONDecodeError as exc:
                result.skip(f"{path.name}:{line_no}", f"invalid JSON: {exc.msg}")
                continue
            if not isinstance(record, dict):
                result.skip(f"{path.name}:{line_no}", f"expected a JSON object, got {type(record).__name__}")
                continue
            yield line_no, record


def _labels(value: Any, sep: str) -> list[str]:
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        # A list written into a CSV cell: JSON (["a", "b"]) or Python's repr (['a', 'b']).
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list):
            value = parsed
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    if value is None:
        return []
    return [w.strip() for w in str(value).split(sep) if w.strip()]


def _number(value: Any, where: str, key: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: column for {key!r} holds {value!r}, not a number") from exc
    if not math.isfinite(number):
        raise ValueError(f"{where}: column for {key!r} holds {value!r}, not a finite number")
    return number


def build(
    root: Path,
    *,
    annotations: str | Path,
    mapping: dict[str, str],
    labels_sep: str = ",",
    source: str = "generic",
) -> BuildResult:
    """Rows from an annotation file.

    Raises:
        FileNotFoundError: If the annotation file is missing.
        ValueError: If ``id`` is not mapped.

    A record that cannot give a row (bad JSON, a mapped column missing, a rating that is not a
    number) is recorded in ``skipped`` with its line, and the others go on.
    """
    root = require_dir(root, "generic")
    path = Path(annotations)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise FileNotFoundError(f"generic: annotation file not found: {path}")
    if "id" not in mapping:
        raise ValueError("generic: the mapping must name the id column (id=COLUMN)")
    result = BuildResult()
    for line, rec in _records(path, result):
        where = f"{path.name}:{line}"
        absent = [col for col in mapping.values() if col not in rec]
        if absent:
            result.skip(where, f"column(s) {absent} not found; present: {sorted(rec)}")
            continue
        try:
            row = _row(rec, mapping, root, labels_sep, source, where)
        except ValueError as exc:
            result.skip(where, str(exc).removeprefix(f"{where}: "))
            continue
        check_media(row, result)
        result.rows.append(row)
    return result


def _row(rec: dict[str, Any], mapping: dict[str, str], root: Path, labels_sep: str, source: str,
         where: str) -> ManifestRow:
    """One annotation record as a row (media paths absolute).

    Raises:
        ValueError: On a value that cannot be read (a rating that is not a number).
    """
    values = {key: rec[col] for key, col in mapping.items()}
    if values["id"] is None or not str(values["id"]).strip():
        raise ValueError(f"{where}: column for 'id' ({mapping['id']!r}) is empty")
    for name in MEDIA_FIELDS:
        if values.get(name):
            values[name] = str(root / str(values[name]))
    return ManifestRow(
        id=str(values["id"]),
        video=values.get("video") or None,
        audio=values.get("audio") or None,
        image=values.get("image") or None,
        transcript=str(values["transcript"]) if values.get("transcript") else None,
        labels=_labels(values.get("labels"), labels_sep),
        explanation=str(values["explanation"]) if values.get("explanation") else None,
        valence=_number(values.get("valence"), where, "valence"),
        arousal=_number(values.get("arousal"), where, "arousal"),
        split=str(values.get("split") or "train"),
        source=str(values.get("source") or source),
        # The annotation's file:line, unless the file has a column of that name itself.
        extra={"annotation": where} | {k: v for k, v in rec.items() if k not in mapping.values()},
    )
