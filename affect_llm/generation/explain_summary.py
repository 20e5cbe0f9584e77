"""What a batch explanation did, counted and written beside its results as ``<out>.summary.json``.

The results file holds one row per clip, refused clips included (``parse_status: failed``,
``refused: true``, the reason in ``error``). What has no row there, a manifest line that was refused
(bad JSON, schema, a repeated id), is listed here with its line and reason, so that every input is
accounted for: written + skipped + refused lines = the lines of this run's share of the manifest.
A resumed run skips the rows already written; the refused clips among them are listed again
(``refused_earlier``), so that the summary of the last run still names every refused clip.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from affect_llm.data.manifest import ManifestReader
from affect_llm.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)


class GenerationStoppedError(RuntimeError):
    """Generation failed for several batches in a row: a cause that is not one clip's (a GPU error, memory).

    The run stops instead of recording every remaining clip as failed; the rows written before are
    kept, the failed ones are in the results, and ``--retry-failed`` explains them again.
    """


class RunSummary:
    """Counts of one run and the inputs it refused.

    Args:
        out_path: The results file; the summary is ``<out_path>.summary.json``.
        reader: The manifest being read (its refused lines are reported).
    """

    def __init__(self, out_path: Path, reader: ManifestReader | None = None) -> None:
        self.out_path = out_path
        self.path = out_path.with_name(out_path.name + ".summary.json")
        self.reader = reader
        self.counts = {"written": 0, "skipped": 0, "failed": 0, "refused": 0, "unparseable": 0, "warned": 0,
                       "speaker_standardised": 0}
        self.refused_clips: list[dict[str, Any]] = []
        self.refused_earlier: list[dict[str, Any]] = []
        self.failed_earlier = 0

    def count_rows(self, lines: list[dict[str, Any]]) -> None:
        """Count result rows as they are written."""
        for line in lines:
            self.counts["written"] += 1
            self.counts["failed"] += line["parse_status"] == "failed"
            self.counts["unparseable"] += line["parse_status"] == "unparseable"
            self.counts["warned"] += bool(line.get("warnings"))
            self.counts["speaker_standardised"] += bool(line.get("audio_standardised_per_speaker"))
            if line.get("refused"):
                self.count_refused([line])

    def count_refused(self, lines: list[dict[str, Any]]) -> None:
        """Count refused clips, written as result rows or (under ``--strict``) not written."""
        for line in lines:
            self.counts["refused"] += 1
            self.refused_clips.append({"id": line["id"], "error": line["error"]})

    def note_earlier_rows(self, skipped: int, refused: list[dict[str, Any]], failed: int = 0) -> None:
        """Count the ``skipped`` rows earlier runs wrote and the ``failed`` ones among them (generation
        failed), and list the ``refused`` clips (id, error) among them."""
        self.counts["skipped"] = skipped
        self.refused_earlier = refused
        self.failed_earlier = failed

    @property
    def refused_lines(self) -> list[dict[str, Any]]:
        """Manifest lines refused so far (line, id, field, code, reason)."""
        return [issue.to_dict() for issue in self.reader.issues] if self.reader is not None else []

    def totals(self) -> dict[str, int]:
        """Rows written, skipped, failed, refused (media), unparseable, warned; manifest lines refused."""
        return {**self.counts, "refused_earlier": len(self.refused_earlier), "failed_earlier": self.failed_earlier,
                "refused_lines": len(self.reader.issues) if self.reader is not None else 0}

    def to_dict(self) -> dict[str, Any]:
        manifest = str(self.reader.path) if self.reader is not None else None
        return {
            "manifest": manifest,
            "counts": self.totals(),
            "refused_lines": self.refused_lines,
            "refused_clips": self.refused_clips,
            "refused_earlier": self.refused_earlier,
        }

    def write(self) -> None:
        """Write the summary; a failure (a full disk) is logged, not raised: the results are what matter."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        try:
            atomic_write_bytes(self.path, text.encode("utf-8"))
        except OSError as error:
            logger.warning("could not write %s: %s", self.path, error)

