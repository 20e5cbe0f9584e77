"""Raw decoded media -> encoder input tensors, one item at a time.

Audio is a 16 kHz mono float waveform; frames and face crops are ``(K, H, W, 3)`` uint8 RGB.
Resizing uses OpenCV (no torchvision), normalisation follows each encoder family's convention.

Shape letters: K frames, C channels, H/W pixels, M mel bins, F mel frames, S samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

SAMPLE_RATE = 16_000


@dataclass
class MediaInputSettings:
    """How raw media become encoder inputs; saved in ``processor_config.json``.

    Attributes:
        audio_input: ``whisper`` (log-mel windows) or ``waveform`` (wav2vec2, HuBERT, WavLM).
        num_mel_bins: Mel bins of a Whisper encoder.
        audio_window_seconds: Audio longer than this is truncated (the head of the clip is kept);
            shorter audio is zero-padded and the padding is masked out of the features.
        video_image_size: Side of the square frames fed to the vision tower.
        video_mean / video_std: Per-channel normalisation of the vision tower.
        face_image_size: Side of the square face crops fed to the face encoder.
        face_channels: 1 for grayscale face encoders (FER), 3 for RGB ones.
    """

    audio_input: str = "whisper"
    num_mel_bins: int = 80
    audio_window_seconds: float = 30.0
    video_image_size: int = 224
    video_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    video_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    face_image_size: int = 64
    face_channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in images])


def prepare_frames(frames: np.ndarray, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """``(K, H, W, 3)`` uint8 -> ``(K, 3, size, size)`` float normalised per channel."""
    resized = _resize(frames, size).astype(np.float32) / 255.0  # (K, size, size, 3)
    normalised = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous()


def prepare_faces(faces: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """``(K, h, w, 3)`` uint8 crops -> ``(K, C, size, size)`` in [-1, 1] (the FER convention)."""
    resized = _resize(faces, size).astype(np.float32)  # (K, size, size, 3)
    if channels == 1:
        # ITU-R 601 luma, as OpenCV's and Keras' grayscale conversions use.
        resized = (resized @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return torch.from_numpy(resized / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


class AudioInputBuilder:
    """Builds Whisper log-mels or normalised waveforms with a frame-level validity mask."""

    def __init__(self, settings: MediaInputSettings) -> None:
        self.settings = settings
        self.max_samples = int(settings.audio_window_seconds * SAMPLE_RATE)
        self._extractor = None
        if settings.audio_input == "whisper":
            from transformers import WhisperFeatureExtractor

            self._extractor = WhisperFeatureExtractor(
                feature_size=settings.num_mel_bins, chunk_length=int(np.ceil(settings.audio_window_seconds))
            )
            self._extractor.n_samples = self.max_samples
            self._extractor.nb_max_frames = self.max_samples // self._extractor.hop_length
        elif settings.audio_input != "waveform":
            raise ValueError(f"audio_input={settings.audio_input!r}: expected 'whisper' or 'waveform'")

    def __call__(self, waveform: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(values, mask)``: ``(M, F)`` and ``(F,)`` for Whisper, ``(S,)`` and ``(S,)`` otherwise."""
        waveform = np.asarray(waveform, dtype=np.float32)[: self.max_samples]
        if self._extractor is not None:
            out = self._extractor(
                waveform, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length",
                max_length=self.max_samples, truncation=True, return_attention_mask=True,
            )
            return out["input_features"][0], out["attention_mask"][0].bool()
        values = np.zeros(self.max_samples, np.float32)
        # Zero-mean unit-variance, as wav2vec2-style feature extractors do.
        values[: len(waveform)] = (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
        mask = np.zeros(self.max_samples, bool)
        mask[: len(waveform)] = True
        return torch.from_numpy(values), torch.from_numpy(mask)
