"""The data check's journal: rows already checked survive a stopped check and are not decoded again.

Checking a corpus decodes every medium of every row, hours for 10^5 clips. Each row's verdict (its
media issues and durations) is appended to ``checked.partial.jsonl`` in the report folder as the
scan goes, a batch at a time, each batch whole or not at all (:func:`affect_llm.fileio.append_whole`).
A check run again on the same folder reads the journal and inspects only the rows it lacks; at the
end the reports are written and the journal removed.

A verdict is reused only where nothing it judged has changed: the journal's first line names the
manifest (its sha256), the media policy and the checks themselves, and any difference starts the
check over; each verdict records its row's id and the size and modification time of each of its
media files, and a row whose files differ is inspected again. Manifest-level findings (schema,
duplicate ids) are not journaled: reading the manifest again finds them at no cost.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from affect_llm.data.issues import SEVERITY, Issue, MediaPolicy
from affect_llm.data.manifest import MEDIA_FIELDS, ManifestRow
from affect_llm.fileio import append_whole
from affect_llm.hashing import json_sha256

logger = logging.getLogger(__name__)

JOURNAL_NAME = "checked.partial.jsonl"
# Raise when a check changes what it finds in media the codes alone do not show (a new threshold):
# verdicts journaled by the checks before are then not reused.
CHECKS_VERSION = 1
# Verdicts held in memory before they are appended: one fsync per this many rows.
ROWS_PER_APPEND = 32

# A row's media issues, and the seconds of each of its media that has a duration.
Verdict = tuple[list[Issue], dict[str, float]]


def media_stamp(row: ManifestRow) -> dict[str, list[int] | None]:
    """Size and modification time (ns) of each medium the row names; None for a file not there."""
    stamp: dict[str, list[int] | None] = {}
    for name in MEDIA_FIELDS:
        if getattr(row, name) is None:
            continue
        try:
            info = os.stat(row.media_path(name))
        except OSError:
            stamp[name] = None
        else:
            stamp[name] = [info.st_size, info.st_mtime_ns]
    return stamp


def _header(manifest_sha256: str, policy: MediaPolicy | None) -> dict[str, Any]:
    policy = policy or MediaPolicy()
    checks = {"version": CHECKS_VERSION, "severity": dict(sorted(SEVERITY.items()))}
    header = {"journal": "affect-llm data check", "manifest_sha256": manifest_sha256,
              "policy": {"min_sample_rate": policy.min_sample_rate, "min_audio_seconds": policy.min_audio_seconds,
                         "silence_peak": policy.silence_peak, "overrides": dict(sorted(policy.overrides.items()))},
              "checks": json_sha256(checks)}
    return json.loads(json.dumps(header))  # as the file reads back, for the comparison


class CheckJournal:
    """Verdicts of rows checked by an earlier, stopped run of the same check, and the file new ones go to."""

    def __init__(self, out_dir: Path, manifest_sha256: str, policy: MediaPolicy | None) -> None:
        self.path = out_dir / JOURNAL_NAME
        self.header = _header(manifest_sha256, policy)
        self.done: dict[int, dict[str, Any]] = {}
        self.reused = 0
        self._pending: list[dict[str, Any]] = []
        self._fd: int | None = None

    def open(self) -> CheckJournal:
        """Read what an earlier run journaled (when it checked the same thing) and open the file to append."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._read_earlier()
        if kept is None:
            self.path.unlink(missing_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            append_whole(self._fd, (json.dumps(self.header) + "\n").encode(), self.path)
        else:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            os.ftruncate(self._fd, kept)  # a line cut by a kill mid-write is dropped, not appended to
        return self

    def _read_earlier(self) -> int | None:
        """Load the earlier verdicts; returns the bytes of whole lines to keep, or None to start over."""
        if not self.path.is_file():
            return None
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if header != self.header:
            logger.warning("%s: journaled by a check of another manifest, policy or checks; checking every row",
                           self.path)
            return None
        kept = len(lines[0]) + 1
        for raw in lines[1:-1]:  # the last piece has no newline after it: empty, or a cut line
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            self.done[int(entry["line"])] = entry
            kept += len(raw) + 1
        return kept

    def verdict(self, row: ManifestRow) -> Verdict | None:
        """The journaled verdict of this row, when its id and its files are unchanged."""
        entry = self.done.get(row.line)
        if entry is None or entry["id"] != row.id or entry["media"] != media_stamp(row):
            return None
        self.reused += 1
        return [Issue(**issue) for issue in entry["issues"]], entry["seconds"]

    def record(self, row: ManifestRow, verdict: Verdict) -> None:
        issues, seconds = verdict
        self._pending.append({"line": row.line, "id": row.id, "media": media_stamp(row),
                              "issues": [issue.to_dict() for issue in issues], "seconds": seconds})
        if len(self._pending) >= ROWS_PER_APPEND:
            self.flush()

    def flush(self) -> None:
        """Append the verdicts held in memory (whole, then fsynced)."""
        if self._pending and self._fd is not None:
            data = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in self._pending).encode("utf-8")
            append_whole(self._fd, data, self.path)
        self._pending = []

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """The reports are written: the journal has served."""
        self.close()
        self.path.unlink(missing_ok=True)

