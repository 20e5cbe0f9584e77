"""The typed media of a batch: per modality, encoder inputs or cached encoder features.

One object travels from collation through ``forward`` and ``generate`` to every caller; nobody
parses keyword names. A modality absent from a batch is ``None``: no tensors, never zeros
pretending to be input.

Shape letters: N items of the modality in the batch (in batch order, the order ``masked_scatter``
fills placeholders), T encoder steps, D encoder width, K frames, C channels, H/W pixels, M mel bins,
F mel frames, S samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from affect_llm.configuration import MODALITIES


@dataclass(frozen=True)
class ModalityInput:
    """One modality of ``N`` items: encoder inputs or encoder features, never both.

    Attributes:
        values: Encoder inputs: audio ``(N, M, F)`` log-mels or ``(N, S)`` waveforms; video and
            face ``(N, K, C, H, W)``.
        attention_mask: Audio: ``(N, F)`` or ``(N, S)`` validity of the input frames/samples. Video
            and face: ``(N, K)`` validity of the frames, set when items with fewer frames (a still
            image has one) were padded to share a batch; None means every frame is real.
        features: Frozen-encoder outputs ``(N, T, D)`` (the feature cache).
        feature_mask: ``(N, T)`` bool, True on valid steps.
    """

    values: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    features: torch.Tensor | None = None
    feature_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.values is None) == (self.features is None):
            raise ValueError("ModalityInput: give exactly one of values (encoder inputs) or features")
        if self.features is not None and self.feature_mask is None:
            mask = torch.ones(self.features.shape[:2], dtype=torch.bool, device=self.features.device)
            object.__setattr__(self, "feature_mask", mask)

    @property
    def num_items(self) -> int:
        return int((self.values if self.values is not None else self.features).shape[0])

    @property
    def is_features(self) -> bool:
        return self.features is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The set tensors by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to(self, device: torch.device | str) -> ModalityInput:
        return ModalityInput(**{name: t.to(device) for name, t in self.tensors().items()})

    @staticmethod
    def concat(parts: Sequence[ModalityInput]) -> ModalityInput:
        """Items of several inputs in order; dimension 1 (time, samples, frames) is padded at the end.

        Raises:
            ValueError: If some parts hold encoder inputs and others features.
        """
        kinds = {p.is_features for p in parts}
        if len(kinds) != 1:
            raise ValueError("cannot batch encoder inputs with cached features of the same modality")
        names = parts[0].tensors().keys()
        merged = {name: pad_and_concat([getattr(p, name) for p in parts]) for name in names if name != "attention_mask"}
        frame_counts = {p.values.shape[1] for p in parts if p.values is not None and p.values.dim() == 5}
        if frame_counts and (len(frame_counts) > 1 or any(p.attention_mask is not None for p in parts)):
            # Frames padded onto a shorter item (a still image beside 4-frame clips) are marked, so the
            # encoder's features of the padding never count as what the item shows.
            merged["attention_mask"] = pad_and_concat([p.frame_mask() for p in parts])
        elif "attention_mask" in names:
            merged["attention_mask"] = pad_and_concat([p.attention_mask for p in parts])
        return ModalityInput(**merged)

    def frame_mask(self) -> torch.Tensor:
        """``(N, K)`` validity of the frames of video or face values (all True unless padded)."""
        if self.values is None or self.values.dim() != 5:
            raise ValueError("frame_mask: only video and face encoder inputs (N, K, C, H, W) have frames")
        if self.attention_mask is not None:
            return self.attention_mask.bool()
        return torch.ones(self.values.shape[:2], dtype=torch.bool, device=self.values.device)


@dataclass(frozen=True)
class MediaInputs:
    """The media of a batch (or of one item, ``N = 1`` per modality), by modality."""

    audio: ModalityInput | None = None
    video: ModalityInput | None = None
    face: ModalityInput | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present, in canonical order."""
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    def get(self, modality: str) -> ModalityInput | None:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}: expected one of {MODALITIES}")
        return getattr(self, modality)

    def items(self) -> Iterator[tuple[str, ModalityInput]]:
        for modality in self.modalities:
            yield modality, getattr(self, modality)

    def to(self, device: torch.device | str) -> MediaInputs:
        return MediaInputs(**{m: part.to(device) for m, part in self.items()})

    def only(self, modalities: Sequence[str]) -> MediaInputs:
        """The same media restricted to ``modalities`` (the model's encoders)."""
        return MediaInputs(**{m: part for m, part in self.items() if m in modalities})

    @staticmethod
    def concat(items: Sequence[MediaInputs]) -> MediaInputs:
        """One batch from per-item media; items without a modality contribute nothing to it."""
        merged = {}
        for modality in MODALITIES:
            parts = [part for item in items if (part := item.get(modality)) is not None]
            if parts:
                merged[modality] = ModalityInput.concat(parts)
        return MediaInputs(**merged)


def pad_and_concat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dimension 0, padding dimension 1 at the end (zeros, or False for masks)."""
    if len(tensors) == 1:
        return tensors[0]
    length = max(t.shape[1] for t in tensors)
    fill = False if tensors[0].dtype == torch.bool else 0
    padded = []
    for tensor in tensors:
        if tensor.shape[1] < length:
            extra = tensor.new_full((tensor.shape[0], length - tensor.shape[1], *tensor.shape[2:]), fill)
            tensor = torch.cat([tensor, extra], dim=1)
        padded.append(tensor)
    return torch.cat(padded, dim=0)
