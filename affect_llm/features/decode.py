"""Clips decoded in worker processes, ahead of the encoders that consume them.

Decoding (video frames, audio, face detection, log-mels) runs on the CPU while the encoders and
the LLM run on the accelerator; in one process the two take turns. Here a ``torch.utils.data``
DataLoader hands rows to ``decode_workers`` processes, which return batches in order and keep
``PREFETCH_BATCHES`` batches per worker ready while the caller encodes the previous ones.
Processes, not threads: decord aborted ("double free or corruption") decoding two clips at once
from threads of one process.

A :class:`ClipJob` is what a worker does with one row: hash its media into cache keys, read its
features from the cache when they are all there, or else decode it into encoder inputs. The
featurizer, the training loader and batch explanation use the same job.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from affect_llm.data.manifest import ManifestRow
from affect_llm.data.media import MediaError, load_media
from affect_llm.features.cache import FeatureCache
from affect_llm.hashing import file_sha256, text_sha256
from affect_llm.modeling.media import MediaInputs, ModalityInput

PREFETCH_BATCHES = 2
# A worker that cannot hand its batch over (shared memory full or capped: "unable to resize file")
# would otherwise leave the caller waiting for ever; no batch of clips takes this long to decode.
DECODE_BATCH_TIMEOUT_S = 1800


@dataclass
class MediaOptions:
    """How clips are sampled before encoding (part of every cache key, but for the worker count).

    Attributes:
        num_frames: Frames sampled uniformly per video (face crops are cut from them).
        detect_faces: Crop the largest face per frame (else the whole frame is the face input).
        decode_workers: Processes decoding clips ahead of the encoders; 0 decodes in the calling
            process, between encoder batches.
    """

    num_frames: int = 4
    detect_faces: bool = True
    decode_workers: int = 1

    @classmethod
    def of_checkpoint(cls, meta: dict[str, Any], num_frames: int | None = None, decode_workers: int = 1) -> MediaOptions:
        """How a checkpoint's clips are read: as its training read them (``data.num_frames``,
        ``data.detect_faces`` of the config its metadata records), ``num_frames`` overriding."""
        data = (meta.get("config") or {}).get("data") or {}
        return cls(num_frames=num_frames or data.get("num_frames", cls.num_frames),
                   detect_faces=data.get("detect_faces", cls.detect_faces), decode_workers=decode_workers)


@dataclass(frozen=True)
class ClipResult:
    """One row after its worker: cache keys, and media (encoder inputs or cached features) or an error.

    Attributes:
        row: The manifest row.
        keys: Cache key per modality (empty without a cache).
        media: Encoder inputs when decoded, features when read from the cache, None on failure or
            when the job only checked that the cache holds the row.
        cached: Every key of the row is in the cache.
        error: Why the row could not be decoded or hashed.
        warnings: What the media checks noted about a decoded row that is still used (issue dicts).
    """

    row: ManifestRow
    keys: dict[str, str]
    media: MediaInputs | None = None
    cached: bool = False
    error: str | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)


def face_detected(meta: dict[str, Any]) -> bool:
    """Whether a face detector found a face in at least one frame (per-frame records in ``meta``)."""
    per_frame = meta.get("faces")
    if per_frame is not None:
        return any(frame.get("method") not in (None, "centre") for frame in per_frame)
    return any(meta.get("face_found") or ())


def row_content_hash(row: ManifestRow) -> str:
    """Hash of the row's media files, and of the channels it records (they decide what is encoded)."""
    parts = [f"{field}={file_sha256(path)}" for field in ("video", "audio", "image")
             if (path := row.media_path(field)) is not None]
    if row.channels is not None:
        parts.append("channels=" + ",".join(row.channels))
    return text_sha256("|".join(parts))


class ClipJob:
    """Key, read or decode one row; picklable, so it runs in any worker process.

    Args:
        extractor: The processor's feature extractor (raw media -> encoder inputs).
        modalities: Modalities the model has encoders for.
        options: Sampling settings.
        cache: The feature cache, or None to decode every row.
        encoder_ids: Encoder identity per modality (cache keys).
        settings: Sampling and preprocessing settings (cache keys).
        read_cached: Return cached features; False only checks that the cache holds them.
    """

    def __init__(
        self, extractor: Any, modalities: Sequence[str], options: MediaOptions, cache: FeatureCache | None = None,
        encoder_ids: dict[str, str] | None = None, settings: dict[str, Any] | None = None, read_cached: bool = True,
    ) -> None:
        self.extractor = extractor
        self.modalities = tuple(modalities)
        self.options = options
        self.cache = cache
        self.encoder_ids = encoder_ids or {}
        self.settings = settings or {}
        self.read_cached = read_cached

    def keys(self, row: ManifestRow) -> dict[str, str]:
        digest = row_content_hash(row)
        return {m: FeatureCache.key(row.id, digest, self.encoder_ids[m], self.settings) for m in self.modalities}

    def decode(self, row: ManifestRow) -> MediaInputs:
        """Encoder inputs of one row.

        Raises:
            MediaError, OSError, ValueError: The media cannot be read or decoded.
        """
        return self.decode_with_warnings(row)[0]

    def decode_with_warnings(self, row: ManifestRow) -> tuple[MediaInputs, list[dict[str, Any]]]:
        """Encoder inputs of one row and the warnings of its media checks.

        Raises:
            MediaError, OSError, ValueError: The media cannot be read or decoded.
        """
        item = load_media(
            row, num_frames=self.options.num_frames, detect_faces=self.options.detect_faces,
            max_audio_seconds=self.extractor.audio_window_seconds, face_size=max(self.extractor.face_image_size, 64),
        )
        # A clip in which no frame shows a face has no face channel: the centre-crop fallback stands
        # in for frames a detector missed, never for a face that is not there. Without detection
        # (faces cropped already, as in FER-style corpora) the whole frame is the face input.
        face = item.video
        if self.options.detect_faces:
            face = item.face if face_detected(item.meta) else None
        audio, video = item.audio, item.video
        channels = row.channels
        if channels is not None:
            # The dataset says what the clip carries: a sound track without a voice is not given to
            # the model as one (it would describe a voice), nor frames without a face as a face.
            audio = audio if "audio" in channels else None
            video, face = (video, face) if "video" in channels else (None, None)
        media = self.extractor(audio=audio, video=video, face=face, modalities=self.modalities)
        return media, list(item.meta.get("issues") or [])

    def read_cached_features(self, keys: dict[str, str]) -> MediaInputs | None:
        """The row's features from the cache; None when an entry is missing or corrupt."""
        found = self.read_cached_entry(keys)
        return None if found is None else found[0]

    def read_cached_entry(self, keys: dict[str, str]) -> tuple[MediaInputs, list[dict[str, Any]]] | None:
        """The row's features from the cache and the warnings its media checks gave when it was
        decoded (kept beside each entry); None when an entry is missing or corrupt."""
        parts: dict[str, ModalityInput] = {}
        warnings: list[dict[str, Any]] = []
        for modality, key in keys.items():
            found = self.cache.get_with_meta(key)
            if found is None:
                return None
            entry, meta = found
            warnings = warnings or list(meta.get("warnings") or [])
            if entry:  # an empty entry records that the clip has no such medium
                features = entry["features"][None]  # (1, T, D)
                parts[modality] = ModalityInput(features=features,
                                                feature_mask=torch.ones(features.shape[:2], dtype=torch.bool))
        return MediaInputs(**parts), warnings

    def __call__(self, row: ManifestRow) -> ClipResult:
        keys: dict[str, str] = {}
        try:
            if self.cache is not None:
                keys = self.keys(row)
                if all(self.cache.contains(k) for k in keys.values()):
                    if not self.read_cached:
                        return ClipResult(row, keys, cached=True)
                    found = self.read_cached_entry(keys)
                    if found is not None:
                        # A rerun from the cache notes what the first run's checks noted.
                        return ClipResult(row, keys, found[0], cached=True, warnings=found[1])
            media, warnings = self.decode_with_warnings(row)
            return ClipResult(row, keys, media, warnings=warnings)
        except (MediaError, OSError, ValueError) as error:
            return ClipResult(row, keys, error=str(error))


class _Rows(Dataset):
    def __init__(self, rows: Sequence[ManifestRow], job: ClipJob) -> None:
        self.rows, self.job = rows, job

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ClipResult:
        return self.job(self.rows[index])


def _as_list(results: list[ClipResult]) -> list[ClipResult]:
    return results


def worker_context() -> str | None:
    """``fork`` on Linux: workers share the parent's memory and start in milliseconds (they touch
    no CUDA state); elsewhere the platform's default."""
    return "fork" if sys.platform.startswith("linux") else None


def die_with_parent(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of every loader: on Linux a worker is killed when the process that started
    it dies. Otherwise a parent killed outright (the OOM killer, ``kill -9``, a scheduler) leaves its
    forked workers waiting for ever, each holding its memory."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    quiet_abandoned_handovers()


def quiet_abandoned_handovers() -> None:
    """In a worker: say nothing when the parent drops a tensor handover half-way.

    A worker hands its tensors over by file descriptor through a thread (multiprocessing's
    ``resource_sharer``) that reports every error to ``sys.excepthook``. A parent that ends (Ctrl-C,
    SIGTERM, an error) resets the connection, and the worker printed a ConnectionResetError traceback
    after the parent's own last line. Any other error is reported as before.
    """
    report = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        if not issubclass(kind, (ConnectionError, EOFError)):
            report(kind, error, trace)

    sys.excepthook = hook


def decode_batches(
    rows: Sequence[ManifestRow], job: ClipJob, batch_size: int, workers: int,
) -> Iterator[list[ClipResult]]:
    """``job`` applied to every row, in order, in batches, by ``workers`` processes (0: this process)."""
    if not rows:
        return iter(())
    num_batches = -(-len(rows) // batch_size)
    # One worker decodes one whole batch: a single batch gains nothing from a process but its start-up.
    workers = 0 if num_batches == 1 else min(workers, num_batches)
    loader = DataLoader(
        _Rows(rows, job), batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_as_list,
        prefetch_factor=PREFETCH_BATCHES if workers else None,
        multiprocessing_context=worker_context() if workers else None, worker_init_fn=die_with_parent,
        # Its own generator: starting the loader draws nothing from the global RNG, so how many
        # clips were already cached changes nothing in the training that follows.
        generator=torch.Generator().manual_seed(0),
        timeout=DECODE_BATCH_TIMEOUT_S if workers else 0,
    )
    return _named_timeouts(iter(loader), workers)


def _named_timeouts(batches: Iterator[list[ClipResult]], workers: int) -> Iterator[list[ClipResult]]:
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as error:
            if "timed out" not in str(error):
                raise
            raise RuntimeError(
                f"no decoded batch from the {workers} decode worker(s) in {DECODE_BATCH_TIMEOUT_S} s: a worker "
                f"cannot hand its tensors over (is /dev/shm full?); rerun with --decode-workers 0 "
                f"(data.decode_workers: 0) to decode in this process") from error
        yield batch
