"""Join the outputs of explanation shards into one results file, and prove every id came out once.

Each ``affect-llm explain --shard i/n`` run writes its own JSONL (a SLURM array task per shard,
``training/slurm/explain_array.sbatch``). :func:`merge_results` reads them all against the manifest:
every id of the manifest (of the split, when one is named) must have exactly one row. Ids without a
row are missing (a shard that never ran, or was killed and not rerun); ids with more than one row
are duplicated (overlapping shards, or a part given twice); rows whose id the manifest does not hold
are unexpected (another manifest or split). Rows that were written but failed (refused media,
generation errors) are listed too: they are accounted for, yet have no answer. The parts must have
been written by the same model, prompt, task and decoding
(:data:`~affect_llm.generation.explain.PROVENANCE_FIELDS`).

The merged file holds one row per id, in manifest order (the first row of a duplicated id).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affect_llm.data.manifest import ManifestReader
from affect_llm.fileio import atomic_write_bytes
from affect_llm.generation.explain import (
    PROVENANCE_FIELDS,
    check_split,
    provenance_difference,
    same_provenance,
)


@dataclass
class MergeReport:
    """What a merge found.

    Attributes:
        expected: Ids of the manifest (of the split), in manifest order.
        rows: Rows read from every part (a duplicated id counted each time).
        missing: Expected ids without a row.
        duplicated: Id -> number of rows, for ids with more than one.
        unexpected: Ids with a row but not in the manifest (of the split).
        failed: Id -> error, for rows written without an answer (refused media, failed generation).
        unparseable: Ids whose answer did not parse (they have a row and the raw text).
        torn: ``"part: line N"`` for a last line cut short (a shard killed mid-write and not rerun).
        refused_lines: Manifest lines the reader refused (they have no id to expect).
    """

    expected: list[str]
    rows: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unparseable: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    refused_lines: int = 0

    @property
    def complete(self) -> bool:
        """Every expected id has exactly one row, and no row is foreign."""
        return not (self.missing or self.duplicated or self.unexpected)

    def to_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "expected": len(self.expected),
            "rows": self.rows,
            "missing": self.missing,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            "failed": self.failed,
            "unparseable": self.unparseable,
            "torn": self.torn,
            "refused_lines": self.refused_lines,
        }


def read_part(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(line number, row)`` of a results file; ``row`` is None for a torn last line.

    Raises:
        FileNotFoundError: If the part does not exist.
        ValueError: Naming the file and line, for a line that is not a JSON row with an id (other than
            a torn last line).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file")
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)  # no newline after it: a write cut short
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if last:
                yield number, None
                continue
            raise ValueError(f"{path}: line {number}: not a JSON row ({error})") from error
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ValueError(f"{path}: line {number}: field 'id': missing or not a string")
        yield number, row


def _check_provenance(row: dict[str, Any], reference: dict[str, Any], where: str) -> None:
    for name in PROVENANCE_FIELDS:
        if not same_provenance(name, row.get(name), reference[name]):
            written, expected = provenance_difference(name, row.get(name), reference[name])
            raise ValueError(f"{where}: field {name!r} is {written}, but {reference['where']} has {expected}; shards of one run "
                             "share model, prompt, task, decoding and precision")
        if reference[name] is None:  # a field older rows lack: the first row that has it is the reference
            reference[name] = row.get(name)


def merge_results(
    manifest: str | Path, parts: Sequence[str | Path], out_path: str | Path | None = None,
    split: str | None = None,
) -> MergeReport:
    """Check shard outputs against the manifest and write them as one file.

    Args:
        manifest: The manifest the shards explained.
        parts: Their results files.
        out_path: Where the merged rows go (manifest order, one per id); None only checks.
        split: Only ids of this split are expected (as ``explain --split``).

    Returns:
        The report; the file is written even when ids are missing (the report says so).

    Raises:
        FileNotFoundError: A part or the manifest does not exist.
        ValueError: A part has a malformed line, or rows of another model, prompt, task or decoding.
    """
    reader = ManifestReader(manifest)
    expected = [row.id for row in reader if split is None or row.split == split]
    if split is not None and not expected:
        check_split(manifest, split)
    report = MergeReport(expected, refused_lines=len(reader.issues))
    wanted = set(expected)
    kept: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    reference: dict[str, Any] | None = None
    for part in map(Path, parts):
        for number, row in read_part(part):
            where = f"{part}: line {number}"
            if row is None:
                report.torn.append(where)
                continue
            if reference is None:
                reference = {**{name: row.get(name) for name in PROVENANCE_FIELDS}, "where": where}
            _check_provenance(row, reference, where)
            report.rows += 1
            counts[row["id"]] += 1
            kept.setdefault(row["id"], row)
    report.missing = [i for i in expected if i not in counts]
    report.duplicated = {i: n for i, n in counts.items() if n > 1}
    report.unexpected = sorted(i for i in counts if i not in wanted)
    for row_id in expected:
        row = kept.get(row_id)
        if row is not None and row.get("parse_status") == "failed":
            report.failed[row_id] = row.get("error") or "failed"
        elif row is not None and row.get("parse_status") == "unparseable":
            report.unparseable.append(row_id)
    if out_path is not None:
        text = "".join(json.dumps(kept[i], ensure_ascii=False, sort_keys=True) + "\n" for i in expected if i in kept)
        atomic_write_bytes(out_path, text.encode("utf-8"))
    return report
