"""Training and validation batches through a ``torch.utils.data`` DataLoader, read lazily.

Nothing per clip is held in memory: a loader worker reads a sample's features from the feature
cache (:class:`CachedMedia`) or decodes its clip into encoder inputs (:class:`DecodedMedia`, for
stages that train the encoders and for runs without a cache, whose frozen encoders then run in the
model's forward), tokenizes the prompt and answer, and collates the batch, while the main process
computes the step before. Memory stays flat in the number of clips; the only per-clip state is
each row's cache keys.

Shape letters: B batch, L tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from affect_llm.data.manifest import ManifestRow
from affect_llm.data.media import MediaError
from affect_llm.features.decode import PREFETCH_BATCHES, ClipJob, die_with_parent, worker_context
from affect_llm.features.speakers import SpeakerStandardiser
from affect_llm.modeling.media import MediaInputs
from affect_llm.processing.packing import collate_packed
from affect_llm.processing.processor import IGNORE_INDEX, AffectProcessor
from affect_llm.training.schedule import Sample
from affect_llm.training.targets import answer_for


class FeatureCacheEntryError(ValueError):
    """A row's features were in the cache when the stage began and cannot be read now (a damaged
    shard file): the run stops naming it, and a rerun with ``--resume`` encodes the clip again."""


class CachedMedia:
    """Row -> its cached features (``(1, T, D)`` per modality the clip has).

    Args:
        job: Reads entries (:meth:`~affect_llm.features.decode.ClipJob.read_cached_features`).
        keys: Row id -> cache key per modality, from featurization.
        standardiser: Maps audio features onto each speaker's statistics (``model.audio_speaker_normalisation``).
    """

    def __init__(self, job: ClipJob, keys: dict[str, dict[str, str]],
                 standardiser: SpeakerStandardiser | None = None) -> None:
        self.job, self.keys, self.standardiser = job, keys, standardiser

    def __call__(self, row: ManifestRow) -> MediaInputs:
        media = self.job.read_cached_features(self.keys[row.id])
        if media is None:
            # The entry was marked bad as it was read: the next run encodes the clip again.
            where = self.job.cache.last_corrupt_shard or self.job.cache.root
            raise FeatureCacheEntryError(
                f"row {row.id!r}: its features in {where} are missing or failed their checksum (the file is "
                f"damaged); the entry is now marked bad: rerun with --resume to encode the clip again and continue")
        return media if self.standardiser is None else self.standardiser(row, media)


class DecodedMedia:
    """Row -> encoder inputs decoded in the loader worker.

    Raises (when called):
        ValueError: Naming the row, when its media cannot be decoded (without a cache, clips are
            first decoded here, so a broken one is found here; ``affect-llm data check`` finds it sooner).
    """

    def __init__(self, job: ClipJob) -> None:
        self.job = job

    def __call__(self, row: ManifestRow) -> MediaInputs:
        try:
            return self.job.decode(row)
        except (MediaError, OSError, ValueError) as error:
            raise ValueError(f"row {row.id!r} ({row.manifest_path}:{row.line}): cannot decode its media: {error}; remove it "
                             f"from the manifest (affect-llm data check lists such rows)") from error


class StageItems(Dataset):
    """Sample -> training item: prompt and answer token ids (labels on the answer only) and media.

    Args:
        processor: Builds prompts and tokenizes.
        rows: Dataset name -> the rows samples index into.
        media: Row -> its media (:class:`CachedMedia` or :class:`DecodedMedia`).
    """

    def __init__(self, processor: AffectProcessor, rows: dict[str, list[ManifestRow]],
                 media: Callable[[ManifestRow], MediaInputs]) -> None:
        self.processor, self.rows, self.media = processor, rows, media

    def __getitem__(self, sample: Sample) -> dict[str, Any]:
        row = self.rows[sample.dataset][sample.index]
        media = self.media(row)
        messages = self.processor.build_messages(sample.task, media.modalities, transcript=row.words,
                                                 transcript_recognised=row.transcript_recognised)
        item = self.processor.encode_text(messages, answer_for(row, self.processor.prompt.task_keys(sample.task)))
        if not sample.counted:
            item["labels"] = [IGNORE_INDEX] * len(item["labels"])
        return {**item, "media": media}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


class Batch(dict):
    """A collated batch that the DataLoader's pinning thread knows how to pin (media included)."""

    def pin_memory(self) -> Batch:
        pinned = Batch({key: value.pin_memory() for key, value in self.items() if isinstance(value, torch.Tensor)})
        media: MediaInputs = self["media"]
        pinned["media"] = MediaInputs(**{
            m: type(part)(**{name: t.pin_memory() for name, t in part.tensors().items()})
            for m, part in media.items()})
        return pinned


class Collate:
    """``processor.collate`` as a picklable callable returning a :class:`Batch`; with ``packed_rows``,
    the samples packed into at most that many rows (:mod:`affect_llm.processing.packing`)."""

    def __init__(self, processor: AffectProcessor, packed_rows: int = 0) -> None:
        self.processor, self.packed_rows = processor, packed_rows

    def __call__(self, items: list[dict[str, Any]]) -> Batch:
        if self.packed_rows:
            return Batch(collate_packed(items, self.packed_rows, self.processor.tokenizer.pad_token_id))
        return Batch(self.processor.collate(items))


def batch_loader(dataset: Dataset, batches: Iterable[list[Sample]], workers: int, pin_memory: bool,
                 seed: int = 0, collate: Callable[[list[Any]], Any] | None = None, packed_rows: int = 0) -> DataLoader:
    """A DataLoader yielding ``dataset``'s items in the given batches, in order.

    Args:
        batches: Lists of samples (a :class:`~affect_llm.training.sampler.ScheduleSampler`, or
            :func:`~affect_llm.training.sampler.validation_batches`).
        workers: Loader processes (0: the calling process).
        pin_memory: Pin batches for asynchronous copies to a CUDA device.
        seed: Seeds the loader's own generator, so that creating it draws nothing from the global
            RNG a resumed run restores.
        collate: Turns a batch's items into what the step takes (default: the processor's
            padded :class:`Batch` of ``dataset.processor``).
        packed_rows: With the default collate, pack each batch into at most this many rows (0: pad).
    """
    return DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate or Collate(dataset.processor, packed_rows),
        pin_memory=pin_memory, prefetch_factor=PREFETCH_BATCHES if workers else None,
        multiprocessing_context=worker_context() if workers else None, worker_init_fn=die_with_parent,
        generator=torch.Generator().manual_seed(seed),
    )
