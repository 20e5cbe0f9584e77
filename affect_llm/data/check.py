"""The data check: find every bad row of a manifest, report it, and split the manifest in two.

The manifest is streamed (:class:`~affect_llm.data.manifest.ManifestReader`): a refused line costs that
line. Every row goes through :func:`affect_llm.data.validation.inspect_row`, the same checks
``explain``, training, chat and the server apply: schema, duplicate ids, non-UTF-8 text, and for each
medium whether it exists, is a regular file, holds the right kind of content, decodes, its duration,
and for audio the sample rate, channels, NaN/inf, length and silence. Outputs, in ``out_dir``:

- ``report.json`` / ``report.md``: every issue with its line, id, field, code and reason;
- ``quarantine.jsonl``: one line per bad row (line, id, reasons);
- ``clean.jsonl``: the good rows, a valid manifest whose relative media paths are rewritten to
  resolve from ``out_dir``.

A stopped check keeps the rows it has checked (:mod:`affect_llm.data.check_journal`): run again on
the same folder, it decodes only the rest.

An issue is an ``error`` (the row is quarantined) or a ``warning`` (reported, row kept), as
:data:`affect_llm.data.issues.SEVERITY` says.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affect_llm.data.check_journal import CheckJournal
from affect_llm.data.issues import Issue, MediaPolicy
from affect_llm.data.manifest import MEDIA_FIELDS, ManifestReader, ManifestRow, row_from_dict, write_manifest
from affect_llm.data.validation import inspect_row
from affect_llm.fileio import atomic_write_bytes
from affect_llm.hashing import file_sha256

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """What the check found.

    Attributes:
        manifest: The checked manifest.
        manifest_sha256: Its hash, as provenance.
        num_rows: Non-blank lines.
        num_good: Rows without errors (written to ``clean.jsonl``).
        issues: Every issue, in line order.
        bad_lines: Lines of the quarantined rows.
        durations: Per modality, seconds of each good medium that has a duration.
        outputs: Paths of the files written.
        rows_reused: Rows whose verdict an earlier, stopped run of the check had journaled.
    """

    manifest: str
    manifest_sha256: str
    num_rows: int = 0
    num_good: int = 0
    issues: list[Issue] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    rows_reused: int = 0

    @property
    def num_bad(self) -> int:
        return len(self.bad_lines)

    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.is_error]

    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if not i.is_error]

    def add(self, line: int, issues: list[Issue]) -> bool:
        """Record a line's issues; True when the line is usable (no error)."""
        self.issues.extend(issues)
        if any(issue.is_error for issue in issues):
            self.bad_lines.append(line)
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        summary = {
            key: {"count": len(v), "total": float(sum(v)), "min": float(min(v)), "max": float(max(v))}
            for key, v in self.durations.items()
            if v
        }
        return {
            "manifest": self.manifest,
            "manifest_sha256": self.manifest_sha256,
            "num_rows": self.num_rows,
            "num_good": self.num_good,
            "num_bad": self.num_bad,
            "bad_lines": self.bad_lines,
            "counts": {
                "errors": dict(sorted(Counter(i.code for i in self.errors()).items())),
                "warnings": dict(sorted(Counter(i.code for i in self.warnings()).items())),
            },
            "issues": [i.to_dict() for i in self.issues],
            "durations": summary,
            "outputs": self.outputs,
        }


def _relocate(row: ManifestRow, out_dir: Path) -> ManifestRow:
    """The row with relative media paths rewritten to resolve from ``out_dir``."""
    updates = {}
    for name in MEDIA_FIELDS:
        value = getattr(row, name)
        if value is not None and not Path(value).is_absolute():
            resolved = row.media_path(name)
            updates[name] = os.path.relpath(Path(resolved).resolve(), out_dir.resolve())
    data = row.to_dict() | updates
    return row_from_dict(data, path=out_dir / "clean.jsonl", line=row.line)


# Medium -> the key of its duration in the inspection's metadata: all of it the report keeps.
DURATION_KEYS = {"video": "video_seconds", "audio": "audio_file_seconds"}


def _verdict(row: ManifestRow, policy: MediaPolicy | None) -> tuple[list[Issue], dict[str, float]]:
    """The row's issues and the seconds of each of its media that has a duration (what is journaled)."""
    issues, meta = _inspected(row, policy)
    return issues, {medium: float(meta[key]) for medium, key in DURATION_KEYS.items() if meta.get(key) is not None}


def check_manifest(
    path: str | Path, out_dir: str | Path | None = None, *, policy: MediaPolicy | None = None
) -> CheckReport:
    """Check every row of a manifest and write the report, quarantine and clean manifest.

    Args:
        path: The manifest.
        out_dir: Where to write outputs, and meanwhile the journal of the rows checked, which a
            stopped check leaves there for the next run to go on from; None writes nothing.
        policy: Severity adjustments (``min_sample_rate`` for ``--min-sample-rate``).

    Returns:
        The report.

    Raises:
        FileNotFoundError: If the manifest does not exist.
    """
    reader = ManifestReader(path)
    report = CheckReport(manifest=str(reader.path), manifest_sha256=file_sha256(reader.path))
    journal = None if out_dir is None else CheckJournal(Path(out_dir), report.manifest_sha256, policy).open()
    good: list[ManifestRow] = []
    refused = 0
    try:
        for row in reader:
            # Lines refused since the last good row come first: the report stays in line order.
            for issue in reader.issues[refused:]:
                report.add(issue.line, [issue])
            refused = len(reader.issues)
            verdict = journal.verdict(row) if journal is not None else None
            if verdict is None:
                verdict = _verdict(row, policy)
                if journal is not None:
                    journal.record(row, verdict)
            issues, seconds = verdict
            if report.add(row.line, issues):
                good.append(row)
                for medium, value in seconds.items():
                    report.durations.setdefault(medium, []).append(value)
        for issue in reader.issues[refused:]:
            report.add(issue.line, [issue])
    except BaseException:
        if journal is not None:  # stopped (Ctrl-C, SIGTERM) or failed: the rows checked so far are kept
            journal.flush()
            journal.close()
        raise
    report.num_rows = reader.num_lines
    report.num_good = len(good)
    if journal is not None:
        report.rows_reused = journal.reused
        _write_outputs(report, good, Path(out_dir))
        journal.remove()
    return report


def _inspected(row: ManifestRow, policy: MediaPolicy | None) -> tuple[list[Issue], dict[str, Any]]:
    """``inspect_row``, with an unforeseen failure recorded as the row's error: one row never ends the check."""
    try:
        return inspect_row(row, policy=policy)
    except Exception as exc:  # noqa: BLE001 (a decoder's own failure; the row is quarantined and named)
        logger.exception("line %d (%s): checking failed", row.line, row.id)
        reason = f"checking failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
        return [Issue("undecodable", None, reason, line=row.line, id=row.id)], {}


def _write_outputs(report: CheckReport, good: list[ManifestRow], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = write_manifest([_relocate(row, out_dir) for row in good], out_dir / "clean.jsonl")
    by_line: dict[int, list[Issue]] = {}
    for issue in report.errors():
        by_line.setdefault(issue.line, []).append(issue)
    records = []
    for line in report.bad_lines:
        issues = by_line[line]
        records.append({
            "line": line,
            "id": next((i.id for i in issues if i.id is not None), None),
            "reasons": [f"{i.field or 'row'}: {i.reason}" for i in issues],
        })
    quarantine = out_dir / "quarantine.jsonl"
    atomic_write_bytes(quarantine, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    report.outputs = {
        "clean": str(clean),
        "quarantine": str(quarantine),
        "report_json": str(out_dir / "report.json"),
        "report_md": str(out_dir / "report.md"),
    }
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(out_dir / "report.json", text.encode("utf-8"))
    atomic_write_bytes(out_dir / "report.md", render_markdown(report).encode("utf-8"))


def _cell(text: str | None) -> str:
    # Ids and reasons come from the user's manifest: a "|" or a line break in one would split the row.
    return " ".join((text or "").split()).replace("|", "\\|")


def render_markdown(report: CheckReport) -> str:
    """A human-readable report: counts, then a table of issues by line."""
    lines = [
        f"# Data check: `{Path(report.manifest).name}`",
        "",
        f"- manifest sha256: `{report.manifest_sha256}`",
        f"- rows: {report.num_rows}, good: {report.num_good}, quarantined: {report.num_bad}, "
        f"warnings: {len(report.warnings())}",
    ]
    summary = report.to_dict()
    for key, stats in summary["durations"].items():
        lines.append(
            f"- {key}: {stats['count']} clips, {stats['total']:.1f} s total, "
            f"{stats['min']:.2f}-{stats['max']:.2f} s"
        )
    counts = summary["counts"]
    for severity in ("errors", "warnings"):  # how many of each kind, before the rows that show them
        if counts[severity]:
            lines.append(f"- {severity}: " + ", ".join(f"`{code}` {n}" for code, n in counts[severity].items()))
    lines += ["", "| line | id | field | severity | code | reason |", "|---:|---|---|---|---|---|"]
    for i in report.issues:
        lines.append(f"| {i.line} | {_cell(i.id)} | {_cell(i.field)} | {i.severity} | {i.code} | {_cell(i.reason)} |")
    if not report.issues:
        lines.append("| | | | | | no issues |")
    return "\n".join(lines) + "\n"
