"""Media -> frozen-encoder features, batched and cached; shared by training and generation.

Every clip is decoded and encoded once per (content, encoder weights, sampling settings): later
epochs, curriculum stages and evaluations read the feature cache. A clip that cannot be decoded is
recorded with the reason and skipped; the rest of the batch goes on.

Shape letters: N items, T steps, D encoder width.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch

from affect_llm.data.cache import FeatureCache
from affect_llm.data.manifest import ManifestRow
from affect_llm.data.media import MediaError, content_hash, load_media
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor, pad_and_stack

logger = logging.getLogger(__name__)
Features = dict[str, torch.Tensor]


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
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def row_content_hash(row: ManifestRow) -> str:
    parts = [f"{field}={content_hash(path)}" for field in ("video", "audio", "image")
             if (path := row.media_path(field)) is not None]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


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
        self.settings = {**asdict(self.options), **self.processor.settings.to_dict()}
        self.settings.pop("decode_workers")
        self.failures: dict[str, str] = {}
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

    def _decode(self, row: ManifestRow) -> dict[str, torch.Tensor] | str:
        try:
            item = load_media(
                row, num_frames=self.options.num_frames, detect_faces=self.options.detect_faces,
                max_audio_seconds=self.processor.settings.audio_window_seconds,
                face_size=max(self.processor.settings.face_image_size, 64),
            )
        except (MediaError, OSError, ValueError) as error:
            return str(error)
        return self.processor.prepare_media(
            audio=item.audio if "audio" in self.modalities else None,
            video=item.frames if "video" in self.modalities else None,
            face=item.faces if "face" in self.modalities else None,
        )

    def __call__(self, rows: Sequence[ManifestRow], progress: Callable[[int], None] | None = None) -> dict[str, Features]:
        """Features for each row id that decodes; failures land in :attr:`failures` (id -> reason)."""
        results: dict[str, Features] = {}
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

    def encoder_inputs(self, rows: Sequence[ManifestRow]) -> dict[str, Features]:
        """Decoded and prepared encoder inputs (``m_values``, ...) per row id, for training the encoders.

        Nothing is encoded or cached: trainable encoders must see their inputs at every step.
        """
        results: dict[str, Features] = {}
        with ThreadPoolExecutor(max(1, self.options.decode_workers)) as pool:
            for row, media in zip(rows, pool.map(self._decode, rows), strict=True):
                if isinstance(media, str):
                    self.failures[row.id] = media
                else:
                    results[row.id] = media
        return results

    def _read_cache(self, keys: dict[str, str]) -> Features | None:
        if self.cache is None:
            return None
        features: Features = {}
        for _modality, key in keys.items():
            entry = self.cache.get(key)
            if entry is None:
                return None
            features.update(entry)
        return features

    def _write_cache(self, keys: dict[str, str], features: Features) -> None:
        if self.cache is None:
            return
        for modality, key in keys.items():
            own = {k: v for k, v in features.items() if k.startswith(f"{modality}_")}
            meta: dict[str, Any] = {"encoder": self.encoder_ids[modality], "present": bool(own)}
            self.cache.put(key, own, meta)

    @torch.no_grad()
    def _encode(self, media: list[dict[str, torch.Tensor]]) -> list[Features]:
        """Encode a batch of prepared media; per item, features trimmed to their valid steps."""
        out: list[Features] = [{} for _ in media]
        device = next(self.model.encoders.parameters()).device
        for modality in self.modalities:
            owners = [i for i, m in enumerate(media) if f"{modality}_values" in m]
            if not owners:
                continue
            values = pad_and_stack([media[i][f"{modality}_values"] for i in owners]).to(device)
            mask = None
            if modality == "audio":
                mask = pad_and_stack([media[i]["audio_attention_mask"] for i in owners], fill=False).to(device)
            features, feature_mask = self.model.get_media_features(modality, values, mask)  # (N, T, D), (N, T)
            for row_index, item_features, item_mask in zip(owners, features, feature_mask, strict=True):
                valid = int(item_mask.sum())
                # float16 halves the cache; features are projected after a LayerNorm, so this is lossless in effect.
                out[row_index][f"{modality}_features"] = item_features[:valid].to(torch.float16).cpu()
                out[row_index][f"{modality}_feature_mask"] = torch.ones(valid, dtype=torch.bool)
            self.encoded_items += len(owners)
        return out
