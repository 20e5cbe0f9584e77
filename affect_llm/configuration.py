"""``AffectConfig``: the composite configuration of an audio + video + face + LLM model.

The LLM and each encoder keep their own Hugging Face config (any causal LM; Whisper, wav2vec2,
HuBERT or WavLM for audio; CLIP or SigLIP vision towers for video frames and still images; the FER
mini-Xception for face crops, whose config is defined here too). This config only adds what the
composition needs: projector kinds, a fixed token budget per media item (the one source of the
budgets: the processor reads them from here), placeholder token ids, where each pretrained part
came from, and the precision its weights are held in.

This module imports no model code: configs are cheap to read.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

Modality = Literal["audio", "video", "face"]
MODALITIES: tuple[str, ...] = get_args(Modality)
ProjectorKind = Literal["linear", "mlp", "attention"]
PROJECTOR_KINDS: tuple[str, ...] = get_args(ProjectorKind)
# What the face projector reads of the face encoder's output: its pooled output (for the FER
# encoder, last-block features and expression logits side by side) or the expression logits alone.
FaceFeatures = Literal["pooled", "expression_logits"]
FACE_FEATURE_KINDS: tuple[str, ...] = get_args(FaceFeatures)

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Keras BatchNormalization's default epsilon; torch's default (1e-5) would shift every
# normalised activation slightly and break bit-for-bit agreement with the original weights.
KERAS_BN_EPS = 1e-3


class FerMiniXceptionConfig(PreTrainedConfig):
    """Configuration of :class:`FerMiniXceptionModel`.

    Args:
        num_channels: Input channels (1: grayscale).
        image_size: Square input side in pixels.
        num_labels: Number of expression classes.
        stem_filters: Channels of the two stem 3x3 convolutions.
        block_filters: Output channels of each residual module; each module halves the
            spatial size.
        batch_norm_eps: Epsilon of every batch norm (Keras default 1e-3).
        **kwargs: Passed to ``PretrainedConfig`` (``id2label``, ...).
    """

    model_type = "fer_mini_xception"

    def __init__(
        self,
        num_channels: int = 1,
        image_size: int = 64,
        num_labels: int = len(FER_LABELS),
        stem_filters: int = 8,
        block_filters: tuple[int, ...] | list[int] = (16, 32, 64, 128),
        batch_norm_eps: float = KERAS_BN_EPS,
        **kwargs,
    ) -> None:
        if "id2label" not in kwargs and num_labels == len(FER_LABELS):
            kwargs["id2label"] = dict(enumerate(FER_LABELS))
            kwargs.setdefault("label2id", {label: i for i, label in enumerate(FER_LABELS)})
        self.num_channels = num_channels
        self.image_size = image_size
        self.stem_filters = stem_filters
        self.block_filters = list(block_filters)
        self.batch_norm_eps = batch_norm_eps
        super().__init__(num_labels=num_labels, **kwargs)
        if not self.block_filters:
            raise ValueError("FerMiniXceptionConfig.block_filters must name at least one module")

    @property
    def hidden_size(self) -> int:
        """Width of the pooled feature: last block channels plus class logits."""
        return self.block_filters[-1] + self.num_labels




AutoConfig.register(FerMiniXceptionConfig.model_type, FerMiniXceptionConfig, exist_ok=True)



class AffectConfig(PreTrainedConfig):
    """Configuration of :class:`~affect_llm.modeling.model.AffectForConditionalGeneration`.

    Attributes:
        text_config: Config of the causal LLM.
        audio_config: Config of the audio encoder, or None for a model without audio.
        video_config: Config of the vision tower applied to video frames (and still images), or None.
        face_config: Config of the face-crop encoder, or None.
        audio_projector / video_projector / face_projector: ``linear`` | ``mlp`` | ``attention``.
        num_audio_tokens / num_video_tokens / num_face_tokens: LLM tokens per media item; every
            item of a modality becomes exactly this many tokens, whatever its length.
        audio_token_id / video_token_id / face_token_id: placeholder token ids in the LLM vocabulary
            (set by the processor when it adds its special tokens).
        audio_window_seconds: Whisper encoders see windows of this length instead of 30 s; their
            position table is cut to match, which makes short clips ~30/window times cheaper.
        audio_encoder_layers: Use the output of the audio encoder's first N layers (None: all).
        audio_feature_layers: Concatenate the audio encoder's hidden states after these layers
            (e.g. ``[3, 6]``: prosody from a middle layer, voice quality from the top); the encoder
            keeps ``max(audio_feature_layers)`` layers. None: its last layer only.
        face_features: What the face projector reads: ``pooled`` (the encoder's pooled output) or
            ``expression_logits`` (only the logits of an encoder trained to classify expressions,
            such as the FER mini-Xception: they keep their meaning from drawn faces to real photos,
            where the block features do not).
        audio_speaker_normalisation: Standardise audio features by each speaker's own statistics
            where the data names speakers (see :mod:`affect_llm.features.speakers`).
        component_paths: Where each pretrained part was loaded from (keys ``llm``, ``audio``,
            ``video``, ``face``); None for a part built from its config with random weights.
        precision: How the weights are held (:class:`affect_llm.precision.Precision` as a dict);
            every later load follows it unless the caller overrides it.
    """

    model_type = "affect"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
        "video_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model", optional=True),
        "face_config": SubConfigSpec(config_class=AutoConfig, model_type="fer_mini_xception", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    video_config: dict | PreTrainedConfig | None = None
    face_config: dict | PreTrainedConfig | None = None
    audio_projector: ProjectorKind = "attention"
    video_projector: ProjectorKind = "mlp"
    face_projector: ProjectorKind = "mlp"
    num_audio_tokens: int = 8
    num_video_tokens: int = 4
    num_face_tokens: int = 4
    audio_token_id: int | None = None
    video_token_id: int | None = None
    face_token_id: int | None = None
    audio_window_seconds: float = 30.0
    audio_encoder_layers: int | None = None
    audio_feature_layers: list[int] | None = None
    face_features: FaceFeatures = "pooled"
    audio_speaker_normalisation: bool = False
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
        if self.audio_feature_layers is not None:
            layers = list(self.audio_feature_layers)
            if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
                raise ValueError(f"audio_feature_layers={layers}: distinct layer numbers >= 0 expected")
            if self.audio_encoder_layers is not None and max(layers) > self.audio_encoder_layers:
                raise ValueError(f"audio_feature_layers={layers} reach beyond audio_encoder_layers="
                                 f"{self.audio_encoder_layers}")
        if self.face_features not in FACE_FEATURE_KINDS:
            raise ValueError(f"face_features={self.face_features!r}: expected one of {FACE_FEATURE_KINDS}")
        face_type = getattr(self.face_config, "model_type", None)
        if self.face_features == "expression_logits" and face_type not in (None, "fer_mini_xception"):
            # Every config carries num_labels; only an expression classifier's logits mean expressions.
            raise ValueError(f"face_features='expression_logits' needs a face encoder that classifies expressions "
                             f"(fer_mini_xception), not {face_type!r}")
        if self.component_paths is None:
            self.component_paths = {}
        if self.text_config is not None and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    def encoder_config(self, modality: str) -> PreTrainedConfig | None:
        """The encoder config of ``modality`` (``<modality>_config``)."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}: expected one of {MODALITIES}")
        return getattr(self, f"{modality}_config")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities this model has an encoder for, in canonical order."""
        return tuple(m for m in MODALITIES if self.encoder_config(m) is not None)

    def token_id(self, modality: str) -> int:
        token_id = getattr(self, f"{modality}_token_id")
        if token_id is None:
            raise ValueError(f"{modality}_token_id is not set: build the model through AffectProcessor.add_tokens")
        return token_id

    def reads_expression_logits(self, modality: str) -> bool:
        """Whether ``modality``'s projector reads its encoder's expression logits (``face_features``)."""
        return modality == "face" and self.face_features == "expression_logits"

    def audio_layers_kept(self) -> int | None:
        """How many audio-encoder layers run: enough for the deepest feature layer, or the explicit cut."""
        if self.audio_feature_layers:
            return max(self.audio_feature_layers)
        return self.audio_encoder_layers

    def num_tokens(self, modality: str) -> int:
        return getattr(self, f"num_{modality}_tokens")

    def token_budgets(self) -> dict[str, int]:
        """LLM tokens per media item, for every modality this model has an encoder for."""
        return {m: self.num_tokens(m) for m in self.modalities}


AutoConfig.register("affect", AffectConfig, exist_ok=True)
