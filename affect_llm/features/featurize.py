"""Media -> frozen-encoder features, batched and cached; shared by training, generation and chat.

Every clip is decoded and encoded once per (content, encoder weights, sampling settings): later
epochs, curriculum stages and evaluations read the feature cache. A clip that cannot be decoded is
recorded with the reason and skipped; the rest of the batch goes on.

Each clip's result is a :class:`~affect_llm.modeling.media.MediaInputs` of cached features (one
item per modality the clip has), or of encoder inputs when the encoders train.

Shape letters: N items, T steps, D encoder width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch

from affect_llm.data.manifest import ManifestRow
from affect_llm.data.media import MediaError, load_media
from affect_llm.features.cache import FeatureCache
from affect_llm.hashing import file_sha256, text_sha256
from affect_llm.modeling.media import MediaInputs, ModalityInput
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor

logger = logging.getLogger(__name__)


@dataclass
class MediaOptions:
    """How clips are sampled before encoding (part of every cache key).

    Attributes:
        num_frames: Frames sampled uniformly per video (face crops are cut from them).
        detect_faces: Crop the largest face per frame (else the whole frame is the face input).
        decode_workers: Threads decoding clips in parallel. Default 1: decord aborted the process
            ("double free or corruption") decoding two clips at once from threads.
    """

    num_frames: int = 4
    detect_faces: bool = True
    decode_workers: int = 1


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer: the identity of an encoder's weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def face_detected(meta: dict[str, Any]) -> bool:
    """Whether a face detector found a face in at least one frame (per-frame records in ``meta``)."""
    per_frame = meta.get("faces")
    if per_frame is not None:
        return any(frame.get("method") not in (None, "centre") for frame in per_frame)
    return any(meta.get("face_found") or ())


def row_content_hash(row: ManifestRow) -> str:
    parts = [f"{field}={file_sha256(path)}" for field in ("video", "audio", "image")
             if (path := row.media_path(field)) is not None]
    return text_sha256("|".join(parts))


class MediaFeaturizer:
    """Computes (or reads from the cache) per-item encoder features for manifest rows.

    Args:
        model: The composite model; only its encoders are used.
        processor: Turns decoded media into encoder inputs.
        cache: Feature cache, or None to keep features in memory only.
        options: Sampling settings.
        batch_size: Items encoded per forward pass.
    """

    def __init__(
        self,
        model: AffectForConditionalGeneration,
        processor: AffectProcessor,
        cache: FeatureCache | None = None,
        options: MediaOptions | None = None,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.processor = processor
        self.cache = cache
        self.options = options or MediaOptions()
        self.batch_size = batch_size
        self.modalities = tuple(model.config.modalities)
        self._encoder_ids: dict[str, str] | None = None
        self.settings = {**asdict(self.options), **self.processor.feature_extractor.settings(),
                         "face_channel": "needs_a_detected_face"}
        self.settings.pop("decode_workers")
        self.failures: dict[str, str] = {}
        # Row id -> warnings of the media checks (issue dicts) for rows decoded by this featurizer.
        self.warnings: dict[str, list[dict[str, Any]]] = {}
        self.encoded_items = 0

    @property
    def encoder_ids(self) -> dict[str, str]:
        """Identity of each encoder (reference + weights hash), part of every cache key.

        Computed on first use: hashing the weights is wasted work when no cache is read or written.
        """
        if self._encoder_ids is None:
            references = self.model.config.component_paths or {}
            self._encoder_ids = {
                m: f"{m}:{references.get(m) or 'random'}:{weights_fingerprint(self.model.encoders[m])[:16]}"
                for m in self.modalities
            }
        return self._encoder_ids

    def _keys(self, row: ManifestRow) -> dict[str, str]:
        digest = row_content_hash(row)
        return {m: FeatureCache.key(row.id, digest, self.encoder_ids[m], self.settings) for m in self.modalities}

    def _decode(self, row: ManifestRow) -> MediaInputs | str:
        extractor = self.processor.feature_extractor
        try:
            item = load_media(
                row, num_frames=self.options.num_frames, detect_faces=self.options.detect_faces,
                max_audio_seconds=extractor.audio_window_seconds, face_size=max(extractor.face_image_size, 64),
            )
        except (MediaError, OSError, ValueError) as error:
            return str(error)
        if item.meta.get("issues"):
            self.warnings[row.id] = item.meta["issues"]
        # A clip in which no frame shows a face has no face channel: the centre-crop fallback stands
        # in for frames a detector missed, never for a face that is not there.
        face = item.face if face_detected(item.meta) else None
        return self.processor.prepare_media(audio=item.audio, video=item.video, face=face)

    def __call__(self, rows: Sequence[ManifestRow], progress: Callable[[int], None] | None = None) -> dict[str, MediaInputs]:
        """Features for each row id that decodes; failures land in :attr:`failures` (id -> reason)."""
        results: dict[str, MediaInputs] = {}
        todo: list[tuple[ManifestRow, dict[str, str]]] = []
        for row in rows:
            if self.cache is None:
                # Without a cache there is nothing to key: media bytes need not be hashed.
                todo.append((row, {}))
                continue
            try:
                keys = self._keys(row)
            except (OSError, ValueError) as error:  # unreadable media file
                self.failures[row.id] = str(error)
                continue
            cached = self._read_cache(keys)
            if cached is None:
                todo.append((row, keys))
            else:
                results[row.id] = cached
                if progress:
                    progress(1)
        with ThreadPoolExecutor(max(1, self.options.decode_workers)) as pool:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                decoded = list(pool.map(lambda pair: self._decode(pair[0]), chunk))
                good = []
                for (row, keys), media in zip(chunk, decoded, strict=True):
                    if isinstance(media, str):
                        self.failures[row.id] = media
                        logger.warning("skipping %s: %s", row.id, media)
                    else:
                        good.append((row, keys, media))
                for (row, keys, _), features in zip(good, self._encode([m for _, _, m in good]), strict=True):
                    results[row.id] = features
                    self._write_cache(keys, features)
                if progress:
                    progress(len(chunk))
        return results

    def encoder_inputs(self, rows: Sequence[ManifestRow]) -> dict[str, MediaInputs]:
        """Decoded and prepared encoder inputs per row id, for training the encoders.

        Nothing is encoded or cached: trainable encoders must see their inputs at every step.
        """
        results: dict[str, MediaInputs] = {}
        with ThreadPoolExecutor(max(1, self.options.decode_workers)) as pool:
            for row, media in zip(rows, pool.map(self._decode, rows), strict=True):
                if isinstance(media, str):
                    self.failures[row.id] = media
                else:
                    results[row.id] = media
        return results

    def _read_cache(self, keys: dict[str, str]) -> MediaInputs | None:
        if self.cache is None:
            return None
        parts: dict[str, ModalityInput] = {}
        for modality, key in keys.items():
            entry = self.cache.get(key)
            if entry is None:
                return None
            if entry:  # an empty entry records that the clip has no such medium
                parts[modality] = ModalityInput(features=entry["features"][None],
                                                feature_mask=entry["feature_mask"][None])
        return MediaInputs(**parts)

    def _write_cache(self, keys: dict[str, str], features: MediaInputs) -> None:
        if self.cache is None:
            return
        for modality, key in keys.items():
            part = features.get(modality)
            own = {} if part is None else {"features": part.features[0], "feature_mask": part.feature_mask[0]}
            meta: dict[str, Any] = {"encoder": self.encoder_ids[modality], "present": part is not None}
            self.cache.put(key, own, meta)

    @torch.no_grad()
    def _encode(self, media: list[MediaInputs]) -> list[MediaInputs]:
        """Encode a batch of prepared media; per item, features trimmed to their valid steps."""
        parts: list[dict[str, ModalityInput]] = [{} for _ in media]
        device = next(self.model.encoders.parameters()).device
        for modality in self.modalities:
            owners = [i for i, m in enumerate(media) if m.get(modality) is not None]
            if not owners:
                continue
            batch = ModalityInput.concat([media[i].get(modality) for i in owners]).to(device)
            features, feature_mask = self.model.get_media_features(modality, batch.values, batch.attention_mask)
            for row_index, item_features, item_mask in zip(owners, features, feature_mask, strict=True):
                valid = int(item_mask.sum())
                # float16 halves the cache; features are projected after a LayerNorm, so this is lossless in effect.
                parts[row_index][modality] = ModalityInput(
                    features=item_features[None, :valid].to(torch.float16).cpu(),
                    feature_mask=torch.ones(1, valid, dtype=torch.bool))
            self.encoded_items += len(owners)
        return [MediaInputs(**p) for p in parts]
