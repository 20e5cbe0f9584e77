"""Where a run's training media come from, and which rows can train.

With ``data.feature_cache`` every row's frozen-encoder features go into the cache once (each
process encodes its share of the missing rows, its decode workers running ahead), and the loaders
read them lazily by key: a rank holds each row's cache keys, never its features. Without a cache
the loaders' workers decode clips and the frozen encoders run inside each step, for corpora whose
features would not fit on disk. A stage that trains the encoders always decodes in the workers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from affect_llm.data.manifest import ManifestRow
from affect_llm.features.cache import FeatureCache
from affect_llm.features.decode import ClipJob
from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
from affect_llm.features.moments import FeatureMoments, mean_and_std
from affect_llm.features.speakers import (
    MIN_SPEAKER_CLIPS,
    SpeakerStandardiser,
    speaker_rows,
    speaker_statistics,
    standardiser_for,
)
from affect_llm.modeling.media import MediaInputs
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor
from affect_llm.training.calibration import CALIBRATION_MAX_ROWS, set_projector_statistics
from affect_llm.training.config import DataConfig
from affect_llm.training.loader import CachedMedia, DecodedMedia

logger = logging.getLogger(__name__)


def evenly_spaced(rows: list[ManifestRow], limit: int) -> list[ManifestRow]:
    if len(rows) <= limit:
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


class TrainingMedia:
    """The feature cache (or its absence), the rows' cache keys and the rows that failed to decode.

    Args:
        data: The config's data block.
        accelerator: For the process's share and the collectives.
        models_dir: Where embedded references resolve (encoder fingerprints).
    """

    def __init__(self, data: DataConfig, accelerator: Accelerator, models_dir: Path | None = None) -> None:
        self.data = data
        self.accelerator = accelerator
        self.models_dir = models_dir
        self.cache = FeatureCache(data.feature_cache) if data.feature_cache else None
        self.options = MediaOptions(data.num_frames, data.detect_faces, data.decode_workers)
        self.keys: dict[str, dict[str, str]] = {}
        self.failures: dict[str, str] = {}
        self._keyed_for: str | None = None
        # Per-speaker audio statistics (model.audio_speaker_normalisation), read once per run.
        self.speaker_statistics: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.standardiser: SpeakerStandardiser | None = None

    @property
    def on_the_fly(self) -> bool:
        return self.cache is None

    def featurizer(self, model: AffectForConditionalGeneration, processor: AffectProcessor) -> MediaFeaturizer:
        return MediaFeaturizer(model, processor, self.cache, self.options, models_dir=self.models_dir)

    def prepare(self, model: AffectForConditionalGeneration, processor: AffectProcessor,
                rows: list[ManifestRow]) -> None:
        """Put the features of every row not yet cached for these encoders into the cache."""
        if self.cache is None:
            return
        featurizer = self.featurizer(model, processor)
        identity = json.dumps([featurizer.encoder_ids, featurizer.settings], sort_keys=True, default=str)
        if identity != self._keyed_for:  # other encoders (a stage trained them): other keys
            self.keys, self._keyed_for = {}, identity
        todo = list({r.id: r for r in rows if r.id not in self.keys and r.id not in self.failures}.values())
        started = time.perf_counter()
        keys = featurizer.fill(todo[self.accelerator.process_index :: self.accelerator.num_processes])
        # Every process needs every row's keys and failures: the schedule is drawn from the usable rows.
        for found, failed in gather_object([(keys, featurizer.failures)]):
            self.keys.update(found)
            self.failures.update(failed)
        self.cache.refresh()
        if self.accelerator.is_main_process and todo:
            logger.info("features of %d rows in %.1fs (%d encoded here, %d failed); feature cache %s: %s", len(todo),
                        time.perf_counter() - started, featurizer.encoded_items, len(self.failures),
                        self.cache.root, self.cache.stats().describe())
        for row_id, reason in featurizer.failures.items():
            logger.warning("refusing row %s: %s", row_id, reason)

    def usable(self, rows: list[ManifestRow]) -> list[ManifestRow]:
        """Rows that can train: decoded (and, with a cache, cached) without error."""
        if self.cache is None:
            return [r for r in rows if r.id not in self.failures]
        return [r for r in rows if r.id in self.keys]

    def source(self, processor: AffectProcessor, modalities: tuple[str, ...],
               live_encoders: bool) -> CachedMedia | DecodedMedia:
        """Row -> media for the loaders: cached features, or encoder inputs decoded in the workers."""
        if live_encoders or self.cache is None:
            if self.standardiser is not None:
                raise ValueError("model.audio_speaker_normalisation standardises cached features: this stage decodes "
                                 "clips instead (no data.feature_cache, or it trains the encoders)")
            return DecodedMedia(ClipJob(processor.feature_extractor, modalities, self.options))
        return CachedMedia(ClipJob(processor.feature_extractor, modalities, self.options, self.cache), self.keys,
                           self.standardiser)

    def loader_workers(self, live_encoders: bool) -> int:
        """Decoding needs the decode workers; reading cached features, the loader workers."""
        return self.data.decode_workers if live_encoders or self.cache is None else self.data.loader_workers

    def standardise_speakers(self, model: AffectForConditionalGeneration, processor: AffectProcessor,
                             rows: list[ManifestRow]) -> None:
        """Set :attr:`standardiser` when the model standardises audio per speaker (nothing otherwise).

        The statistics come from the cached features of every named speaker's clips (each process
        reads its share; one all-reduce adds them up); the target is the audio projector's own
        standardisation, so they are read once and mapped onto each stage's projector.
        """
        if not model.config.audio_speaker_normalisation:
            self.standardiser = None
            return
        if self.cache is None:
            raise ValueError("model.audio_speaker_normalisation reads each speaker's statistics from cached "
                             "features: set data.feature_cache")
        projector = model.projectors["audio"]
        if self.speaker_statistics is None:
            groups = speaker_rows(r for r in rows if r.id in self.keys)
            job = ClipJob(processor.feature_extractor, ("audio",), self.options, self.cache)

            def features(chosen: list[ManifestRow]) -> Iterator[dict[str, MediaInputs]]:
                for row in chosen[self.accelerator.process_index :: self.accelerator.num_processes]:
                    key = self.keys[row.id].get("audio")
                    media = job.read_cached_features({"audio": key}) if key else None
                    if media is not None:
                        yield {row.id: media}

            device = self.accelerator.device
            self.speaker_statistics = speaker_statistics(
                groups, features, projector.feature_mean.numel(),
                lambda t: self.accelerator.reduce(t.to(device), "sum").cpu())
            if self.accelerator.is_main_process:
                logger.info("audio standardised per speaker: %d speakers with >= %d clips (%s)",
                            len(self.speaker_statistics), MIN_SPEAKER_CLIPS,
                            ", ".join(s.rsplit("#", 1)[-1] for s in sorted(self.speaker_statistics)) or "none")
        self.standardiser = standardiser_for(projector, self.speaker_statistics)

    def _encode_again(self, model: AffectForConditionalGeneration, processor: AffectProcessor,
                      bad: list[ManifestRow]) -> list[ManifestRow]:
        """Encode again the clips whose cache entries failed their checksum as they were read (they are
        marked bad, so featurization sees them as missing); returns this process's rows that are
        readable now. Every process takes part: featurization gathers across them."""
        every = {row.id: row for part in gather_object([bad]) for row in part}
        if not every:
            return []
        if self.accelerator.is_main_process:
            logger.warning("%d feature cache entries failed their checksum (a damaged shard file): encoding "
                           "those clips again", len(every))
        for row_id in every:
            self.keys.pop(row_id, None)
        self.cache.refresh()  # the index read before the entries were marked bad still lists them
        self.prepare(model, processor, list(every.values()))
        return [row for row in bad if row.id in self.keys]

    def calibrate(self, model: AffectForConditionalGeneration, processor: AffectProcessor,
                  rows: list[ManifestRow]) -> None:
        """Standardise fresh projectors with feature statistics of (up to a few thousand) training rows."""
        chosen = evenly_spaced(rows, CALIBRATION_MAX_ROWS)
        mine = chosen[self.accelerator.process_index :: self.accelerator.num_processes]
        moments = FeatureMoments()
        if self.cache is None:
            moments.add_all(self.featurizer(model, processor).stream(mine))
        else:
            job = ClipJob(processor.feature_extractor, tuple(model.config.modalities), self.options, self.cache)
            bad = []
            for row in mine:
                features = job.read_cached_features(self.keys[row.id])
                if features is None:
                    bad.append(row)
                else:
                    moments.add(features)
            for row in self._encode_again(model, processor, bad):
                features = job.read_cached_features(self.keys[row.id])
                if features is not None:
                    moments.add(features)
        widths = {m: projector.feature_mean.numel() for m, projector in model.projectors.items()}
        device = self.accelerator.device
        reduced = moments.reduced(widths, lambda t: self.accelerator.reduce(t.to(device), "sum").cpu())
        for modality, sums in reduced.items():
            statistics = mean_and_std(sums)
            if statistics is not None:
                set_projector_statistics(model.projectors[modality], *statistics)
                logger.info("%s projector standardised on %d feature steps of %d training rows", modality,
                            int(sums[0, 0]), len(chosen))
