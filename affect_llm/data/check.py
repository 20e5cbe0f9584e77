"""The data check: find every bad row of a manifest, report it, and split the manifest in two.

Unlike :func:`affect_llm.data.manifest.load_manifest`, which stops at the first schema error,
the check reads line by line and collects every problem: schema, duplicate ids, non-UTF-8 text,
and for each medium whether it exists, is non-empty and decodes, its duration, and for audio the
sample rate, NaNs, a too-short clip (< 0.25 s) and silence. Outputs, in ``out_dir``:

- ``report.json`` / ``report.md``: every issue with its line, id, field and reason;
- ``quarantine.jsonl``: one line per bad row (line, id, reasons);
- ``clean.jsonl``: the good rows, a valid manifest whose relative media paths are rewritten to
  resolve from ``out_dir``.

An issue is an ``error`` (the row is quarantined) or a ``warning`` (reported, row kept).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from affect_llm.data.manifest import (
    MEDIA_FIELDS,
    ManifestError,
    ManifestRow,
    row_from_dict,
    write_manifest,
)
from affect_llm.data.media import SAMPLE_RATE, MediaError
from affect_llm.hashing import file_sha256

MIN_AUDIO_SECONDS = 0.25
# Peak amplitude below which a clip counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4

Severity = Literal["error", "warning"]


@dataclass
class Issue:
    """One problem found in one row."""

    line: int
    id: str | None
    field: str | None
    reason: str
    severity: Severity = "error"


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
    """

    manifest: str
    manifest_sha256: str
    num_rows: int = 0
    num_good: int = 0
    issues: list[Issue] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def num_bad(self) -> int:
        return len(self.bad_lines)

    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

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
            "issues": [asdict(i) for i in self.issues],
            "durations": summary,
            "outputs": self.outputs,
        }


def _low_rate(sample_rate: int, min_sample_rate: int) -> tuple[str, Severity]:
    return (
        f"sample rate {sample_rate} Hz below {min_sample_rate} Hz (upsampling cannot restore the band)",
        "error",
    )


def check_audio_array(
    audio: np.ndarray, sample_rate: int, channels: int, *, min_sample_rate: int
) -> list[tuple[str, Severity]]:
    """Problems of a decoded waveform ``(S,)`` or ``(S, C)`` (reasons with severities)."""
    found: list[tuple[str, Severity]] = []
    if sample_rate < min_sample_rate:
        found.append(_low_rate(sample_rate, min_sample_rate))
    if channels > 1:
        found.append((f"{channels} channels (mixed down to mono when loaded)", "warning"))
    if audio.size and not np.isfinite(audio).all():
        found.append((f"{int((~np.isfinite(audio)).sum())} NaN/inf samples", "error"))
        return found
    seconds = audio.shape[0] / sample_rate if sample_rate else 0.0
    if seconds < MIN_AUDIO_SECONDS:
        found.append((f"too short: {seconds:.3f} s < {MIN_AUDIO_SECONDS} s", "error"))
    elif float(np.abs(audio).max()) < SILENCE_PEAK:
        found.append((f"silent (peak {float(np.abs(audio).max()):.2e})", "error"))
    return found


def _check_media(
    row: ManifestRow, name: str, min_sample_rate: int, durations: dict
) -> list[tuple[str, Severity]]:
    """Problems of one medium of a row; raises nothing (a decoding failure is an issue)."""
    from affect_llm.data import media

    path = row.media_path(name)
    assert path is not None  # callers only pass fields that are set
    try:
        if name == "audio":
            return _check_audio(path, min_sample_rate, durations)
        if name == "image":
            media.load_image(path)
            return []
        durations.setdefault("video", []).append(media.probe_video(path))
        if row.audio is None:
            audio, meta = media.load_video_audio(path, max_seconds=None)
            if audio is None:
                return [(f"{meta['audio_missing']} (sample has no audio)", "warning")]
            durations.setdefault("audio", []).append(audio.shape[0] / SAMPLE_RATE)
            return check_audio_array(audio, SAMPLE_RATE, 1, min_sample_rate=min_sample_rate)
        return []
    except MediaError as exc:
        return [(exc.reason, "error")]


def _check_audio(path: Path, min_sample_rate: int, durations: dict) -> list[tuple[str, Severity]]:
    """Decode the file the way training does (:func:`affect_llm.data.media.load_audio_file`) and judge it."""
    from affect_llm.data.media import load_audio_file

    mono, meta = load_audio_file(path, max_seconds=None)
    found = check_audio_array(mono, SAMPLE_RATE, int(meta["orig_channels"]), min_sample_rate=0)
    if int(meta["orig_sample_rate"]) < min_sample_rate:
        found.insert(0, _low_rate(int(meta["orig_sample_rate"]), min_sample_rate))
    durations.setdefault("audio", []).append(mono.shape[0] / SAMPLE_RATE)
    return found


def _decode_line(raw: bytes, line: int) -> tuple[Any, list[Issue]]:
    """JSON of one line; a non-UTF-8 byte is reported against the field that holds it."""
    try:
        return json.loads(raw.decode("utf-8")), []
    except UnicodeDecodeError:
        pass
    except json.JSONDecodeError as exc:
        return None, [Issue(line, None, None, f"invalid JSON: {exc.msg} (column {exc.colno})")]
    try:
        obj = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        return None, [Issue(line, None, None, f"invalid JSON: {exc.msg} (column {exc.colno})")]
    row_id = obj.get("id") if isinstance(obj, dict) else None
    fields = (
        [k for k, v in obj.items() if isinstance(v, str) and _has_surrogate(v)]
        if isinstance(obj, dict)
        else []
    )
    issues = [
        Issue(line, row_id if isinstance(row_id, str) else None, k, "not valid UTF-8 text") for k in fields
    ]
    return None, issues or [Issue(line, None, None, "not valid UTF-8")]


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _row_issues(row: ManifestRow, min_sample_rate: int, durations: dict) -> list[Issue]:
    issues: list[Issue] = []
    if not row.modalities() and not row.transcript:
        issues.append(Issue(row.line, row.id, None, "no media and no transcript"))
    for name in MEDIA_FIELDS:
        if getattr(row, name) is None:
            continue
        for reason, severity in _check_media(row, name, min_sample_rate, durations):
            issues.append(Issue(row.line, row.id, name, reason, severity))
    return issues


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


def check_manifest(
    path: str | Path, out_dir: str | Path | None = None, *, min_sample_rate: int = SAMPLE_RATE
) -> CheckReport:
    """Check every row of a manifest and write the report, quarantine and clean manifest.

    Args:
        path: The manifest.
        out_dir: Where to write outputs; None writes nothing.
        min_sample_rate: Audio files below this rate are errors.

    Returns:
        The report.

    Raises:
        FileNotFoundError: If the manifest does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    report = CheckReport(manifest=str(path), manifest_sha256=file_sha256(path))
    good: list[ManifestRow] = []
    seen: dict[str, int] = {}
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            report.num_rows += 1
            issues, row = _check_line(raw, line, path, seen, min_sample_rate, report.durations)
            report.issues.extend(issues)
            if any(i.severity == "error" for i in issues):
                report.bad_lines.append(line)
            elif row is not None:
                good.append(row)
    report.num_good = len(good)
    if out_dir is not None:
        _write_outputs(report, good, Path(out_dir))
    return report


def _check_line(
    raw: bytes, line: int, path: Path, seen: dict[str, int], min_sample_rate: int, durations: dict
) -> tuple[list[Issue], ManifestRow | None]:
    obj, issues = _decode_line(raw, line)
    if issues:
        return issues, None
    try:
        row = row_from_dict(obj, path=path, line=line)
    except ManifestError as exc:
        row_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
        return [Issue(line, row_id, exc.field, exc.reason)], None
    if row.id in seen:
        return [Issue(line, row.id, "id", f"duplicate id (first on line {seen[row.id]})")], None
    seen[row.id] = line
    return _row_issues(row, min_sample_rate, durations), row


def _write_outputs(report: CheckReport, good: list[ManifestRow], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = write_manifest([_relocate(row, out_dir) for row in good], out_dir / "clean.jsonl")
    by_line: dict[int, list[Issue]] = {}
    for issue in report.errors():
        by_line.setdefault(issue.line, []).append(issue)
    quarantine = out_dir / "quarantine.jsonl"
    tmp = quarantine.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for line in report.bad_lines:
            issues = by_line[line]
            record = {
                "line": line,
                "id": next((i.id for i in issues if i.id is not None), None),
                "reasons": [f"{i.field or 'row'}: {i.reason}" for i in issues],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, quarantine)
    report.outputs = {
        "clean": str(clean),
        "quarantine": str(quarantine),
        "report_json": str(out_dir / "report.json"),
        "report_md": str(out_dir / "report.md"),
    }
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")


def render_markdown(report: CheckReport) -> str:
    """A human-readable report: counts, then a table of issues by line."""
    lines = [
        f"# Data check: `{Path(report.manifest).name}`",
        "",
        f"- manifest sha256: `{report.manifest_sha256}`",
        f"- rows: {report.num_rows}, good: {report.num_good}, quarantined: {report.num_bad}",
    ]
    for key, stats in report.to_dict()["durations"].items():
        lines.append(
            f"- {key}: {stats['count']} clips, {stats['total']:.1f} s total, "
            f"{stats['min']:.2f}-{stats['max']:.2f} s"
        )
    lines += ["", "| line | id | field | severity | reason |", "|---:|---|---|---|---|"]
    for i in report.issues:
        reason = i.reason.replace("|", "\\|")
        lines.append(f"| {i.line} | {i.id or ''} | {i.field or ''} | {i.severity} | {reason} |")
    if not report.issues:
        lines.append("| | | | | no issues |")
    return "\n".join(lines) + "\n"
