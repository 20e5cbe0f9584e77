"""``AffectConfig``: the composite configuration of an audio + video + face + LLM model.

The LLM and each encoder keep their own Hugging Face config (any causal LM; Whisper, wav2vec2,
HuBERT or WavLM for audio; CLIP or SigLIP vision towers for video frames; the FER mini-Xception
for face crops). This config only adds what the composition needs: projector kinds, a fixed token
budget per media item, placeholder token ids, and where each pretrained part came from.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Registers the face CNN's config with AutoConfig, so a saved ``face_config`` dict resolves.
from affect_llm.modeling import face_cnn as _face_cnn  # noqa: F401

MODALITIES: tuple[str, ...] = ("audio", "video", "face")
Modality = Literal["audio", "video", "face"]
ProjectorKind = Literal["linear", "mlp", "attention"]
PROJECTOR_KINDS: tuple[str, ...] = ("linear", "mlp", "attention")


class AffectConfig(PreTrainedConfig):
    """Configuration of :class:`~affect_llm.modeling.model.AffectForConditionalGeneration`.

    Attributes:
        text_config: Config of the causal LLM.
        audio_config: Config of the audio encoder, or None for a model without audio.
        vision_config: Config of the vision tower applied to video frames, or None.
        face_config: Config of the face-crop encoder, or None.
        audio_projector / video_projector / face_projector: ``linear`` | ``mlp`` | ``attention``.
        num_audio_tokens / num_video_tokens / num_face_tokens: LLM tokens per media item; every
            item of a modality becomes exactly this many tokens, whatever its length.
        audio_token_id / video_token_id / face_token_id: placeholder token ids in the LLM vocabulary
            (set by the processor when it adds its special tokens).
        audio_window_seconds: Whisper encoders see windows of this length instead of 30 s; their
            position table is cut to match, which makes short clips ~30/window times cheaper.
        audio_encoder_layers: Use the output of the audio encoder's first N layers (None: all).
        component_paths: Where each pretrained part was loaded from (keys ``llm``, ``audio``,
            ``video``, ``face``); None for a part built from its config with random weights.
        precision: How the weights are held (:class:`affect_llm.precision.Precision` as a dict);
            every later load follows it unless the caller overrides it.
    """

    model_type = "affect"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model", optional=True),
        "face_config": SubConfigSpec(config_class=AutoConfig, model_type="fer_mini_xception", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    face_config: dict | PreTrainedConfig | None = None
    audio_projector: str = "attention"
    video_projector: str = "mlp"
    face_projector: str = "mlp"
    num_audio_tokens: int = 8
    num_video_tokens: int = 4
    num_face_tokens: int = 4
    audio_token_id: int | None = None
    video_token_id: int | None = None
    face_token_id: int | None = None
    audio_window_seconds: float = 30.0
    audio_encoder_layers: int | None = None
    component_paths: dict[str, Any] | None = None
    precision: dict[str, Any] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        for modality in MODALITIES:
            kind = getattr(self, f"{modality}_projector")
            if kind not in PROJECTOR_KINDS:
                raise ValueError(f"{modality}_projector={kind!r}: expected one of {PROJECTOR_KINDS}")
            if getattr(self, f"num_{modality}_tokens") < 1:
                raise ValueError(f"num_{modality}_tokens must be >= 1")
        if self.component_paths is None:
            self.component_paths = {}
        if self.text_config is not None and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    def encoder_config(self, modality: str) -> PreTrainedConfig | None:
        """The encoder config of ``modality`` (``face`` -> ``face_config``, ``video`` -> ``vision_config``)."""
        return {"audio": self.audio_config, "video": self.vision_config, "face": self.face_config}[modality]

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities this model has an encoder for, in canonical order."""
        return tuple(m for m in MODALITIES if self.encoder_config(m) is not None)

    def token_id(self, modality: str) -> int:
        token_id = getattr(self, f"{modality}_token_id")
        if token_id is None:
            raise ValueError(f"{modality}_token_id is not set: build the model through AffectProcessor.add_tokens")
        return token_id

    def num_tokens(self, modality: str) -> int:
        return getattr(self, f"num_{modality}_tokens")


AutoConfig.register("affect", AffectConfig, exist_ok=True)
