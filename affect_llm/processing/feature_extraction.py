"""``AffectFeatureExtractor``: raw decoded media of one clip -> encoder inputs.

Audio is a 16 kHz mono float waveform; video frames and face crops are ``(K, H, W, 3)`` uint8 RGB.
Resizing uses OpenCV (no torchvision); normalisation follows each encoder family's convention.
Saved with the processor (``processor_config.json``, key ``feature_extractor``) and read back by
``AutoFeatureExtractor`` / ``AutoProcessor``.

Shape letters: K frames, C channels, H/W pixels, M mel bins, F mel frames, S samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoFeatureExtractor, FeatureExtractionMixin

from affect_llm.configuration import AffectConfig
from affect_llm.modeling.media import MediaInputs, ModalityInput

SAMPLE_RATE = 16_000
CLIP_MEAN, CLIP_STD = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]
AUDIO_INPUTS = ("whisper", "waveform")


class AffectFeatureExtractor(FeatureExtractionMixin):
    """How raw media become encoder inputs.

    Args:
        audio_input: ``whisper`` (log-mel windows) or ``waveform`` (wav2vec2, HuBERT, WavLM).
        num_mel_bins: Mel bins of a Whisper encoder.
        audio_window_seconds: Audio longer than this is truncated (the head of the clip is kept);
            shorter audio is zero-padded and the padding is masked out of the features.
        video_image_size: Side of the square frames fed to the vision tower.
        video_mean / video_std: Per-channel normalisation of the vision tower.
        face_image_size: Side of the square face crops fed to the face encoder.
        face_channels: 1 for grayscale face encoders (FER), 3 for RGB ones.
    """

    model_input_names = ["media"]

    def __init__(
        self,
        audio_input: str = "whisper",
        num_mel_bins: int = 80,
        audio_window_seconds: float = 30.0,
        video_image_size: int = 224,
        video_mean: list[float] | None = None,
        video_std: list[float] | None = None,
        face_image_size: int = 64,
        face_channels: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if audio_input not in AUDIO_INPUTS:
            raise ValueError(f"audio_input={audio_input!r}: expected one of {AUDIO_INPUTS}")
        self.audio_input = audio_input
        self.num_mel_bins = num_mel_bins
        self.audio_window_seconds = float(audio_window_seconds)
        self.video_image_size = video_image_size
        self.video_mean = list(video_mean or [0.5, 0.5, 0.5])
        self.video_std = list(video_std or [0.5, 0.5, 0.5])
        self.face_image_size = face_image_size
        self.face_channels = face_channels

    @classmethod
    def for_config(cls, config: AffectConfig) -> AffectFeatureExtractor:
        """The preprocessing each of ``config``'s encoders expects."""
        options: dict[str, Any] = {"audio_window_seconds": config.audio_window_seconds}
        if config.audio_config is not None:
            options["audio_input"] = "whisper" if config.audio_config.model_type == "whisper" else "waveform"
            options["num_mel_bins"] = getattr(config.audio_config, "num_mel_bins", 80)
        if config.video_config is not None:
            options["video_image_size"] = config.video_config.image_size
            if config.video_config.model_type.startswith("clip"):
                options["video_mean"], options["video_std"] = CLIP_MEAN, CLIP_STD
        if config.face_config is not None:
            options["face_image_size"] = getattr(config.face_config, "image_size", 64)
            options["face_channels"] = getattr(config.face_config, "num_channels", 1)
        return cls(**options)

    def settings(self) -> dict[str, Any]:
        """The preprocessing settings (part of every feature-cache key)."""
        keys = ("audio_input", "num_mel_bins", "audio_window_seconds", "video_image_size", "video_mean",
                "video_std", "face_image_size", "face_channels")
        return {key: getattr(self, key) for key in keys}

    def __call__(
        self, audio: np.ndarray | None = None, video: np.ndarray | None = None, face: np.ndarray | None = None,
        modalities: tuple[str, ...] = ("audio", "video", "face"),
    ) -> MediaInputs:
        """Raw media of one clip -> :class:`MediaInputs` with one item per present modality."""
        parts: dict[str, ModalityInput] = {}
        if audio is not None and "audio" in modalities:
            values, mask = self.audio_values(audio)
            parts["audio"] = ModalityInput(values=values[None], attention_mask=mask[None])
        if video is not None and "video" in modalities:
            parts["video"] = ModalityInput(values=prepare_frames(video, self.video_image_size, self.video_mean,
                                                                 self.video_std)[None])
        if face is not None and "face" in modalities:
            parts["face"] = ModalityInput(values=prepare_faces(face, self.face_image_size, self.face_channels)[None])
        return MediaInputs(**parts)

    def audio_values(self, waveform: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, mask)``: ``(M, F)`` and ``(F,)`` for Whisper, ``(S,)`` and ``(S,)`` otherwise."""
        max_samples = int(self.audio_window_seconds * SAMPLE_RATE)
        waveform = np.asarray(waveform, dtype=np.float32)[:max_samples]
        if self.audio_input == "whisper":
            extractor = self._whisper_extractor()
            out = extractor(
                waveform, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length",
                max_length=max_samples, truncation=True, return_attention_mask=True,
            )
            return out["input_features"][0], out["attention_mask"][0].bool()
        values = np.zeros(max_samples, np.float32)
        # Zero-mean unit-variance, as wav2vec2-style feature extractors do.
        values[: len(waveform)] = (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
        mask = np.zeros(max_samples, bool)
        mask[: len(waveform)] = True
        return torch.from_numpy(values), torch.from_numpy(mask)

    def _whisper_extractor(self) -> Any:
        # Built on first use and kept: its mel filter bank costs a few milliseconds to compute.
        extractor = self.__dict__.get("_whisper")
        if extractor is None:
            from transformers import WhisperFeatureExtractor

            max_samples = int(self.audio_window_seconds * SAMPLE_RATE)
            extractor = WhisperFeatureExtractor(feature_size=self.num_mel_bins,
                                                chunk_length=int(np.ceil(self.audio_window_seconds)))
            extractor.n_samples = max_samples
            extractor.nb_max_frames = max_samples // extractor.hop_length
            self.__dict__["_whisper"] = extractor
        return extractor

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_whisper", None)
        return output


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


AutoFeatureExtractor.register(AffectConfig, AffectFeatureExtractor, exist_ok=True)
