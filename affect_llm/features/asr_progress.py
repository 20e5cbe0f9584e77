"""What ``data transcribe`` has decoded so far, kept beside its output so a killed run goes on.

Recognition is the slow part (seconds per clip on a CPU); the manifest it writes is only whole at
the end. Each decoded chunk's transcriptions are appended here, flushed to disk, and a rerun of the
same command on the same manifest takes them instead of decoding those clips again. The file is
removed once the output manifest is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from affect_llm.fileio import cut_torn_tail
from affect_llm.hashing import file_sha256

logger = logging.getLogger(__name__)


def progress_path(out: str | Path) -> Path:
    """Where the progress of a run writing ``out`` is kept."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl")


class TranscriptProgress:
    """The decoded transcriptions of one run (its manifest, language and recogniser), by row id.

    Args:
        out: The manifest the run writes.
        run: What makes two runs the same one (input manifest hash, language, recogniser).

    Attributes:
        done: ``id -> {"text", "language", "source", "dropped"}`` read from an earlier run.
    """

    def __init__(self, out: str | Path, run: dict[str, Any]) -> None:
        self.path = progress_path(out)
        self.run = run
        self.done: dict[str, dict[str, Any]] = self._read()

    @classmethod
    def for_manifest(cls, manifest: str | Path, out: str | Path, language: str | None, source: str
                     ) -> TranscriptProgress:  # fmt: skip
        return cls(out, {"manifest_sha256": file_sha256(manifest), "language": language, "source": source})

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        cut_torn_tail(self.path)  # a kill mid-line
        lines = self.path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else None
        if header != {"run": self.run}:
            logger.info("%s: written by another run (another manifest, language or recogniser); starting afresh",
                        self.path)
            self.path.unlink()
            return {}
        done = {}
        for line in lines[1:]:
            record = json.loads(line)
            done[record.pop("id")] = record
        if done:
            logger.info("%s: %d clips already recognised by an earlier run are reused", self.path, len(done))
        return done

    def record(self, decoded: list[tuple[str, dict[str, Any]]]) -> None:
        """Append one chunk's ``(id, transcription)`` pairs and put them on disk before going on."""
        new_file = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            if new_file:
                handle.write(json.dumps({"run": self.run}) + "\n")
            for row_id, transcription in decoded:
                handle.write(json.dumps({"id": row_id, **transcription}) + "\n")
                self.done[row_id] = transcription
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self) -> None:
        """The output manifest is written: the progress is no longer needed."""
        self.path.unlink(missing_ok=True)
