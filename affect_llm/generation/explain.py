"""Batch explanation of a manifest: resumable, sharded, one JSONL row per clip.

A rerun skips ids already in the output (and refuses a file written by another model, prompt, task
or decoding); each batch is appended whole or not at all (:func:`affect_llm.fileio.append_whole`), so a
crash or a full disk loses at most the batch in flight and never leaves a torn row. One process
writes an output at a time (:class:`affect_llm.fileio.OutputLock`). The manifest is streamed: a
refused line (bad JSON, schema, repeated id) is recorded in ``<out>.summary.json`` with its line and
reason; a clip whose media the checks refuse (:mod:`affect_llm.data.validation`), or whose answer does
not parse, gets a row with the reason; the run goes on. ``strict`` stops at the first refused input.
Clips are decoded in worker processes (``ExplainSettings.decode_workers``) while the batch before
them is generated. :mod:`affect_llm.generation.explain_merge` joins the outputs of the shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affect_llm.data.issues import RefusedInputError
from affect_llm.data.manifest import ManifestError, ManifestReader, ManifestRow
from affect_llm.fileio import OutputLock, append_whole, atomic_write_bytes, cut_torn_tail
from affect_llm.generation.backend import (
    DecodingSettings,
    GenerationBackend,
    GenerationRequest,
    answer_decoding,
)
from affect_llm.generation.explain_summary import GenerationStoppedError, RunSummary
from affect_llm.labels.parse import parse_answer
from affect_llm.processing.processor import absent_channels

if TYPE_CHECKING:
    from affect_llm.features.speakers import SpeakerStandardiser

logger = logging.getLogger(__name__)


@dataclass
class ExplainSettings:
    """Options of a batch run.

    Attributes:
        task: Task of the checkpoint's prompt (``reason``, ``perceive``, ``evidence``).
        batch_size: Clips per generation batch.
        split: Only rows of this split (None: every row).
        shard: ``(index, count)``: this run takes the ids whose hash falls in its shard.
        limit: Stop after this many new rows (None: all).
        retry_failed: Drop the output's rows of failed or refused clips first, so they are explained
            again (:func:`drop_failed_rows`).
        strict: Stop at the first refused manifest line or medium instead of recording it.
        decode_workers: Processes decoding clips ahead of generation; 0 decodes in this process,
            between generation batches.
    """

    task: str = "reason"
    batch_size: int = 8
    split: str | None = None
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    strict: bool = False
    decode_workers: int = 1
    retry_failed: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be at least 1")
        if self.decode_workers < 0:
            raise ValueError(f"decode_workers={self.decode_workers}: must be 0 or more")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as error:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from error
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def in_shard(row_id: str, shard: tuple[int, int]) -> bool:
    # A hash, not the row position, so shards stay stable when the manifest is reordered.
    digest = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16)
    return digest % shard[1] == shard[0]


# Batches in a row whose generation raised before the run stops (GenerationStoppedError): one bad
# batch is that batch's clips; several in a row are a cause no clip has (a GPU error, memory), and
# going on would only record every remaining clip as failed.
STOP_AFTER_FAILED_BATCHES = 3
# Row fields that say which model, prompt and decoding produced an answer. The checkpoint path is
# not one of them: a moved checkpoint is the same model, a retrained one at the same path is not.
PROVENANCE_FIELDS = ("model_fingerprint", "prompt", "backend", "decoding", "task", "precision")
# Rows written before the field existed carry no value to compare: they are taken as matching.
_ADDED_PROVENANCE_FIELDS = ("precision",)


def same_provenance(field_name: str, written: Any, expected: Any) -> bool:
    """Whether a row's provenance field ``written`` matches ``expected``: a field rows of older versions
    lack matches anything, and decoding is compared on what changes answers (:func:`answer_decoding`:
    ``--compile`` and, under greedy decoding, the sampling parameters do not)."""
    if field_name in _ADDED_PROVENANCE_FIELDS and (written is None or expected is None):
        return True
    if field_name == "decoding":
        return answer_decoding(written) == answer_decoding(expected)
    return written == expected


def provenance_difference(field_name: str, written: Any, expected: Any) -> tuple[str, str]:
    """The two values as text, narrowed to the differing keys when both are objects."""
    if isinstance(written, dict) and isinstance(expected, dict):
        keys = sorted(k for k in written.keys() | expected.keys() if written.get(k) != expected.get(k))
        if field_name == "decoding":
            keys = [k for k in keys if k in answer_decoding(written) or k in answer_decoding(expected)]
        written, expected = ({k: side.get(k) for k in keys} for side in (written, expected))
    return repr(written), repr(expected)


@dataclass
class DoneRows:
    """What a results file already holds: every id, the failed and refused clips among them, and how
    many failed in generation."""

    ids: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    refused: list[dict[str, Any]] = field(default_factory=list)  # {"id", "error"} per refused clip
    generation_failed: int = 0  # failed rows that are not refused clips: generation raised


def done_rows(out_path: Path, provenance: dict[str, Any] | None = None) -> DoneRows:
    """The rows already written, in one pass; a torn last line (crash mid-write) is ignored and rewritten.

    Args:
        out_path: The results file.
        provenance: When given, every row must match it on ``PROVENANCE_FIELDS``: a resumed run
            appends to answers of the same model, prompt, task and decoding, or not at all.

    Raises:
        ValueError: Naming the file, the line and the differing field, when a row was written by
            another model, prompt, task or decoding.
    """
    done = DoneRows()
    if not out_path.is_file():
        return done
    with out_path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
                done.ids.add(row["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if row.get("parse_status") == "failed":
                done.failed.add(str(row["id"]))
            if row.get("refused"):
                done.refused.append({"id": row["id"], "error": row.get("error")})
            if row.get("parse_status") == "failed" and not row.get("refused"):
                done.generation_failed += 1
            for field_name in PROVENANCE_FIELDS if provenance is not None else ():
                if not same_provenance(field_name, row.get(field_name), provenance.get(field_name)):
                    written, expected = provenance_difference(field_name, row.get(field_name), provenance.get(field_name))
                    raise ValueError(
                        f"{out_path}: line {number} ({row['id']}) was written with {field_name}={written}, this run has "
                        f"{expected}; write to another --out, or delete the file to redo it"
                    )
    return done


def drop_failed_rows(out_path: Path) -> list[str]:
    """Remove the rows of clips that failed or were refused from ``out_path``; returns their ids.

    A rerun skips every id already written, so a clip whose file was missing stays failed after the
    file is restored: this lets the rerun explain it again. The file is replaced at once; every other
    line is kept byte for byte (a torn last line too, which the run then cuts as usual).
    """
    kept, dropped = _split_failed_rows(out_path)
    if dropped:
        atomic_write_bytes(out_path, b"".join(kept))
    return dropped


def _split_failed_rows(out_path: Path) -> tuple[list[bytes], list[str]]:
    """(the lines of ``out_path`` to keep, the ids of its failed or refused clips)."""
    kept: list[bytes] = []
    failed: list[str] = []
    lines = out_path.read_bytes().splitlines(keepends=True) if out_path.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and row.get("parse_status") == "failed":
            failed.append(str(row.get("id")))
        else:
            kept.append(line)
    return kept, failed


def result_row(
    row: ManifestRow, raw: str | None, error: str | None, task: str, identity: dict, timings: dict,
    require_labels: bool = True, warnings: list | None = None,
) -> dict:
    """One output row: the parsed answer, the raw text and its parse status, and provenance.

    ``require_labels``: whether the task asks for labels (a missing ``labels`` key is then unparseable).
    ``warnings``: what the media checks noted about a clip that was used (issue dicts).
    """
    base = {"id": row.id, "raw": raw, "task": task, **identity, "timings": timings, "warnings": warnings or [],
            "refused": False}
    if error is not None:
        return {**base, "labels": None, "explanation": None, "evidence": None, "parse_status": "failed", "error": error}
    parsed = parse_answer(raw, require_labels=require_labels)
    if not parsed.ok:
        return {**base, "labels": None, "explanation": None, "evidence": None, "parse_status": "unparseable",
                "error": parsed.error}
    answer = parsed.answer.to_dict()
    return {**base, **answer, "parse_status": "ok", "error": None}


class BatchExplainer:
    """Runs a backend over manifest rows.

    Args:
        backend: The generation backend.
        featurize: Callable mapping rows to ``{id: features}``, recording failures in ``.failures``.
        processor: Builds the prompts.
        identity: Model and prompt provenance written into every row.
        standardiser: Maps audio features onto each speaker's statistics (``model.audio_speaker_normalisation``).
    """

    def __init__(self, backend: GenerationBackend, featurizer: Any, processor: Any, identity: dict[str, Any],
                 standardiser: SpeakerStandardiser | None = None) -> None:
        self.backend = backend
        self.featurizer = featurizer
        self.processor = processor
        self.identity = identity
        self.standardiser = standardiser
        self.failed_batches_in_a_row = 0

    def _requests(self, rows: list[ManifestRow], features: dict, task: str) -> list[GenerationRequest]:
        requests = []
        for row in rows:
            media = features[row.id]
            if self.standardiser is not None:
                media = self.standardiser(row, media)
            messages = self.processor.build_messages(task, media.modalities, transcript=row.words,
                                                     transcript_recognised=row.transcript_recognised)
            absent = absent_channels(media.modalities, bool(row.words))
            requests.append(GenerationRequest(messages, media, absent))
        return requests

    def run(
        self, rows: Iterable[ManifestRow], out_path: Path, settings: ExplainSettings, decoding: DecodingSettings,
        progress: Any = None, summary: RunSummary | None = None,
    ) -> dict[str, int]:
        """Explain every pending row; returns :meth:`RunSummary.totals` (written, skipped, failed, refused...).

        ``rows`` may be a stream (a :class:`ManifestReader`): rows are taken a window at a time. The
        caller holds the output's :class:`~affect_llm.fileio.OutputLock` (:func:`explain_manifest` does).
        """
        summary = summary or RunSummary(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(out_path)
        done = done_rows(out_path, {**self.identity, "task": settings.task})
        already = done.ids
        _check_shard(out_path, already, settings.shard)
        summary.note_earlier_rows(len(already), done.refused, done.generation_failed)
        self.failed_batches_in_a_row = 0
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            for window in _windows(_pending(rows, already, settings), max(256, 16 * settings.batch_size)):
                # Similar prompt lengths in one batch waste less padding.
                window.sort(key=lambda r: (len(r.transcript or ""), r.modalities(), r.id))
                for batch, features, featurize_s in self._featurized(window, settings.batch_size):
                    self._write_batch(fd, batch, features, featurize_s, settings, decoding, summary)
                    if progress is not None:
                        progress(len(batch))
        finally:
            os.close(fd)
            # Also after an error: what was refused before it is still worth knowing.
            summary.write()
        return summary.totals()

    def _featurized(self, window: list[ManifestRow], batch_size: int,
                    ) -> Iterator[tuple[list[ManifestRow], dict[str, Any], float]]:
        """``(batch, features by id, seconds waited per row)`` for each generation batch of ``window``.

        The featurizer's stream decodes in its worker processes while the batch before is generated,
        so the wait is what decoding did not hide. Its batches need not match the generation batches.
        """
        stream = self.featurizer.stream(window)
        ready: dict[str, Any] = {}
        for start in range(0, len(window), batch_size):
            batch = window[start : start + batch_size]
            started = time.perf_counter()
            while any(r.id not in ready and r.id not in self.featurizer.failures for r in batch):
                ready.update(next(stream))
            waited = (time.perf_counter() - started) / len(batch)
            yield batch, {r.id: ready.pop(r.id) for r in batch if r.id in ready}, waited

    def _write_batch(self, fd: int, batch: list[ManifestRow], features: dict[str, Any], featurize_s: float,
                     settings: ExplainSettings, decoding: DecodingSettings, summary: RunSummary) -> None:
        """Explain one batch and append its rows whole; under strict, stop at a refused clip."""
        lines = self._explain_batch(batch, features, featurize_s, settings.task, decoding)
        refused = [line for line in lines if line["parse_status"] == "failed" and line.get("refused")]
        if settings.strict and refused:
            # The batch's answers are kept and its refused clips are not written (a rerun without them
            # goes on from there), but the summary counts them; the error names the first in the manifest.
            summary.count_refused(refused)
            lines = [line for line in lines if not line.get("refused")]
        append_whole(fd, "".join(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n"
                                 for line in lines).encode("utf-8"), summary.out_path,
                     kept=lambda: summary.count_rows(lines))
        if self.failed_batches_in_a_row >= STOP_AFTER_FAILED_BATCHES:
            error = next(line["error"] for line in lines if not line.get("refused"))
            raise GenerationStoppedError(
                f"{error} ({self.failed_batches_in_a_row} batches in a row; the run stops rather than record every "
                f"remaining clip as failed). Answers written before are kept in {summary.out_path}; fix the cause, "
                "then run the same command with --retry-failed")
        if settings.strict and refused:
            manifest_line = {row.id: row.line for row in batch}
            first = min(refused, key=lambda line: manifest_line.get(line["id"], 0))
            raise RefusedInputError(f"clip {first['id']}: {first['error']}")

    def _explain_batch(self, batch: list[ManifestRow], features: dict[str, Any], featurize_s: float, task: str,
                       decoding: DecodingSettings) -> list[dict]:
        good = [r for r in batch if r.id in features]
        lines = []
        for row in batch:
            if row.id not in features:
                reason = self.featurizer.failures.get(row.id, "media could not be decoded")
                line = result_row(row, None, reason, task, self.identity, {"featurize_s": round(featurize_s, 4)})
                lines.append({**line, "refused": True})
        started = time.perf_counter()
        try:
            texts = self.backend.generate(self._requests(good, features, task), decoding) if good else []
            if good:  # a batch of refused clips only says nothing about generation
                self.failed_batches_in_a_row = 0
        except (RuntimeError, ValueError) as error:  # one bad batch must not end the run
            logger.error("generation failed for %s: %s", [r.id for r in good], error)
            texts = None
            failure = f"generation failed: {error}"
            self.failed_batches_in_a_row += 1
        generate_s = (time.perf_counter() - started) / max(1, len(good))
        timings = {"featurize_s": round(featurize_s, 4), "generate_s": round(generate_s, 4)}
        for i, row in enumerate(good):
            identity = self.identity
            if self.standardiser is not None:  # whether this clip's audio was read against its speaker's own
                identity = {**identity, "audio_standardised_per_speaker": self.standardiser.applies_to(row, features[row.id])}
            if texts is None:
                lines.append(result_row(row, None, failure, task, identity, timings))
            else:
                lines.append(result_row(row, texts[i], None, task, identity, timings,
                                        require_labels="labels" in self.processor.prompt.task_keys(task),
                                        warnings=self.featurizer.warnings.get(row.id)))
        return lines


def _check_shard(out_path: Path, ids: set[str], shard: tuple[int, int]) -> None:
    """Refuse to resume a file that holds rows of another shard (a changed shard count or index)."""
    foreign = sorted(i for i in ids if not in_shard(i, shard))
    if foreign:
        raise ValueError(f"{out_path}: {len(foreign)} of its {len(ids)} rows (e.g. {foreign[0]}) are not in shard "
                         f"{shard[0]}/{shard[1]}: the file was written with another --shard; write this shard to its own --out")


def _pending(rows: Iterable[ManifestRow], already: set[str], settings: ExplainSettings) -> Iterator[ManifestRow]:
    """The rows this run explains: its split and shard, not yet written, up to the limit."""
    taken = 0
    for row in rows:
        if settings.limit is not None and taken >= settings.limit:
            return
        if (settings.split is None or row.split == settings.split) and in_shard(row.id, settings.shard) \
                and row.id not in already:
            taken += 1
            yield row


def pending_count(manifest: str | Path, out_path: str | Path, settings: ExplainSettings) -> int:
    """Rows a run with ``settings`` has left to explain: its split and shard, less the ids already in
    ``out_path``, up to the limit (a quick pass over the manifest; refused lines do not count)."""
    done = done_rows(Path(out_path))
    # The run removes the failed rows before it starts when it retries them.
    already = done.ids - done.failed if settings.retry_failed else done.ids
    return sum(1 for _ in _pending(ManifestReader(manifest), already, settings))


def check_split(manifest: str | Path, split: str) -> None:
    """Refuse a split no row of the manifest has (a typo would otherwise explain nothing and succeed).

    Raises:
        ValueError: Naming the splits the manifest has.
    """
    splits = {row.split for row in ManifestReader(manifest)}
    if split not in splits:
        named = ", ".join(sorted(s for s in splits if s)) or "none"
        raise ValueError(f"--split {split}: no row of {manifest} has it; its splits: {named}")


def _windows(rows: Iterable[ManifestRow], size: int) -> Iterator[list[ManifestRow]]:
    window: list[ManifestRow] = []
    for row in rows:
        window.append(row)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


# vLLM engine options that change the weights' arithmetic, hence the answers.
_ENGINE_PRECISION_OPTIONS = ("dtype", "quantization", "kv_cache_dtype")


def _run_precision(precision: Any, engine_options: dict[str, Any]) -> Any:
    """The precision rows record: the checkpoint's, plus the vLLM engine's own options that change
    answers (``--engine-arg dtype=bfloat16``); without such options, the checkpoint's alone."""
    engine = {key: engine_options[key] for key in _ENGINE_PRECISION_OPTIONS if key in engine_options}
    if not engine:
        return precision
    return {**(precision if isinstance(precision, dict) else {}), "engine": engine}


def explain_manifest(
    manifest: str | Path,
    out_path: str | Path,
    checkpoint: str | Path,
    settings: ExplainSettings | None = None,
    decoding: DecodingSettings | None = None,
    backend: str = "hf",
    feature_cache: str | None = None,
    num_frames: int | None = None,
    models_dir: Path | None = None,
    progress: Any = None,
    backend_options: dict[str, Any] | None = None,
    precision: Any = None,
) -> dict[str, int]:
    """Load a checkpoint and explain a manifest into ``out_path`` (see :class:`BatchExplainer`).

    ``precision`` (:class:`affect_llm.precision.Precision`) overrides how the checkpoint's weights
    are held; None follows what it records.
    """
    from affect_llm.features.cache import FeatureCache
    from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
    from affect_llm.features.speakers import manifest_standardiser
    from affect_llm.generation.load import load_backend
    from affect_llm.loading.checkpoint import checkpoint_fingerprint, read_metadata

    settings = settings or ExplainSettings()
    decoding = decoding or DecodingSettings()
    # Opened and locked first: a missing manifest or a busy output is reported before minutes of loading.
    reader = ManifestReader(manifest, strict=settings.strict)
    meta = read_metadata(checkpoint)
    with OutputLock(out_path):
        if settings.retry_failed:
            retried = drop_failed_rows(Path(out_path))
            logger.info("%s: %d failed or refused rows removed to explain again", out_path, len(retried))
        active = load_backend(backend, str(checkpoint), models_dir, precision=precision, rows=settings.batch_size,
                              compiled=decoding.compile,
                              **(backend_options or {}))
        # Every backend holds the loaded model and processor (.model, .processor): its encoders compute the features.
        options = MediaOptions.of_checkpoint(meta, num_frames, settings.decode_workers)
        cache = FeatureCache(feature_cache) if feature_cache else None
        # One decode batch per generation batch: workers hand over exactly what the next batch needs.
        featurizer = MediaFeaturizer(active.model, active.processor, cache, options, batch_size=settings.batch_size,
                                     models_dir=models_dir)
        identity = {
            "model": str(checkpoint),
            "model_fingerprint": checkpoint_fingerprint(checkpoint),
            "model_step": meta.get("step"),
            "prompt": active.processor.prompt.ref,
            "backend": active.name,
            "decoding": decoding.as_dict(),
            # --dtype and --load-in-4bit change answers (4-bit visibly): a rerun in another precision
            # must not append to these rows as if they were its own.
            # The vLLM engine's precision options are recorded, defaults included: it, not the loaded
            # checkpoint, does the arithmetic of decoding.
            "precision": _run_precision(getattr(active.model.config, "precision", None),
                                        getattr(active, "engine_options", {})),
        }
        standardiser = None
        if active.model.config.audio_speaker_normalisation:
            # A separate featurizer: the pass's failures are found again, and recorded, by the run's own.
            reading = MediaFeaturizer(active.model, active.processor, cache, options, batch_size=settings.batch_size,
                                      models_dir=models_dir)
            standardiser = manifest_standardiser(
                ManifestReader(manifest), reading.stream, active.model.projectors["audio"],
                lambda row: settings.split is None or row.split == settings.split)
            logger.info("%s", standardiser.describe())
        explainer = BatchExplainer(active, featurizer, active.processor, identity, standardiser)
        try:
            return explainer.run(reader, Path(out_path), settings, decoding, progress, RunSummary(Path(out_path), reader))
        except ManifestError as error:  # only under strict: the reader records bad lines otherwise
            raise RefusedInputError(str(error)) from error
