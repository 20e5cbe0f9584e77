"""``ModelSpec``: which parts make a model (the ``model:`` block of a training config).

Cheap to import (no torch): reading and checking a config must not load a deep-learning stack.
A component reference is an embedded model name (``smollm2-135m-instruct``), a local folder, a hub
id (``Qwen/Qwen2.5-7B-Instruct``) or ``tiny:<kind>`` for a tiny random part.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from affect_llm.configuration import FACE_FEATURE_KINDS, PROJECTOR_KINDS, FaceFeatures, ProjectorKind
from affect_llm.precision import Precision


@dataclass
class ModelSpec:
    """Which parts make the model.

    Attributes:
        llm: Causal LLM reference (embedded name, folder, hub id or ``tiny:llm``).
        audio_encoder: Audio encoder reference, or None for no audio.
        video_encoder: Vision tower reference for video frames, or None.
        face_encoder: Face-crop encoder reference, or None.
        audio_projector / video_projector / face_projector: ``linear`` | ``mlp`` | ``attention``.
        num_audio_tokens / num_video_tokens / num_face_tokens: LLM tokens per media item.
        audio_window_seconds: Audio window (Whisper position table is cut to it).
        audio_encoder_layers: Keep the audio encoder's first N layers (prosody lives in the middle ones).
        audio_feature_layers: Concatenate the audio encoder's states after these layers (a learned mix
            of prosody and voice quality); None: the last kept layer only.
        face_features: What the face projector reads: ``pooled`` or ``expression_logits`` (see
            :class:`affect_llm.configuration.AffectConfig`).
        audio_speaker_normalisation: Standardise audio features by each speaker's own statistics
            where a manifest names speakers (:mod:`affect_llm.features.speakers`); needs a feature cache.
        quantization: ``none`` or ``4bit`` (QLoRA: the LLM in NF4 through bitsandbytes).
        dtype: Weight dtype of the LLM: ``float32``, ``bfloat16`` or ``float16``.
        encoder_dtype: Weight dtype of the encoders (None: ``dtype``). See :mod:`affect_llm.precision`.
    """

    llm: str = "tiny:llm"
    audio_encoder: str | None = None
    video_encoder: str | None = None
    face_encoder: str | None = None
    audio_projector: ProjectorKind = "attention"
    video_projector: ProjectorKind = "mlp"
    face_projector: ProjectorKind = "mlp"
    num_audio_tokens: int = 8
    num_video_tokens: int = 4
    num_face_tokens: int = 4
    audio_window_seconds: float = 30.0
    audio_encoder_layers: int | None = None
    audio_feature_layers: list[int] | None = None
    face_features: FaceFeatures = "pooled"
    audio_speaker_normalisation: bool = False
    quantization: str = "none"
    dtype: str = "float32"
    encoder_dtype: str | None = None

    def __post_init__(self) -> None:
        for modality in ("audio", "video", "face"):
            kind = getattr(self, f"{modality}_projector")
            if kind not in PROJECTOR_KINDS:
                raise ValueError(f"model.{modality}_projector={kind!r}: expected one of {PROJECTOR_KINDS}")
            if getattr(self, f"num_{modality}_tokens") < 1:
                raise ValueError(f"model.num_{modality}_tokens must be >= 1")
        if self.face_features not in FACE_FEATURE_KINDS:
            raise ValueError(f"model.face_features={self.face_features!r}: expected one of {FACE_FEATURE_KINDS}")
        if self.audio_speaker_normalisation and self.audio_encoder is None:
            raise ValueError("model.audio_speaker_normalisation needs an audio encoder (model.audio_encoder is empty)")
        if self.llm is None or not str(self.llm):
            raise ValueError("model.llm: a reference to the LLM is required")
        try:
            self.precision()
        except ValueError as error:
            raise ValueError(f"model.{error}") from error
        if self.quantization == "4bit" and self.llm.startswith("tiny:"):
            raise ValueError(f"model.quantization=4bit needs an LLM loaded from weights, not {self.llm!r} built "
                             "from a config: 4-bit quantization happens while loading (save the tiny LLM with "
                             "save_pretrained and name its folder)")

    def precision(self) -> Precision:
        """The load precision this spec asks for."""
        return Precision(dtype=self.dtype, quantization=self.quantization, encoder_dtype=self.encoder_dtype)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def encoder_ref(self, modality: str) -> str | None:
        return {"audio": self.audio_encoder, "video": self.video_encoder, "face": self.face_encoder}[modality]

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities with an encoder, in canonical order."""
        return tuple(m for m in ("audio", "video", "face") if self.encoder_ref(m))

    def token_budgets(self) -> dict[str, int]:
        return {m: getattr(self, f"num_{m}_tokens") for m in self.modalities}
