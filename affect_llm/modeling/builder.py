"""Build a model and its processor from a :class:`ModelSpec` (the ``model:`` block of a config).

A component reference is an embedded model name (``smollm2-135m-instruct``), a local folder, a hub
id (``Qwen/Qwen2.5-7B-Instruct``) or ``tiny:<kind>`` for a tiny random part. References, not
resolved paths, are stored in the config, so a checkpoint moves between machines.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig

from affect_llm.configuration import MODALITIES, AffectConfig
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.tiny import tiny_config, tiny_tokenizer
from affect_llm.precision import Precision
from affect_llm.processing.media_inputs import MediaInputSettings
from affect_llm.processing.processor import AffectProcessor

CLIP_MEAN, CLIP_STD = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]


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
        quantization: ``none`` or ``4bit`` (QLoRA: the LLM in NF4 through bitsandbytes).
        dtype: Weight dtype of the LLM: ``float32``, ``bfloat16`` or ``float16``.
        encoder_dtype: Weight dtype of the encoders (None: ``dtype``). See :mod:`affect_llm.precision`.
    """

    llm: str = "tiny:llm"
    audio_encoder: str | None = None
    video_encoder: str | None = None
    face_encoder: str | None = None
    audio_projector: str = "attention"
    video_projector: str = "mlp"
    face_projector: str = "mlp"
    num_audio_tokens: int = 8
    num_video_tokens: int = 4
    num_face_tokens: int = 4
    audio_window_seconds: float = 30.0
    audio_encoder_layers: int | None = None
    quantization: str = "none"
    dtype: str = "float32"
    encoder_dtype: str | None = None

    def __post_init__(self) -> None:
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


def resolve(reference: str, models_dir: Path | None = None) -> str:
    from affect_llm.models.registry import resolve_model_path

    return resolve_model_path(reference, models_dir)


def component_config(reference: str, kind: str, models_dir: Path | None, vocab_size: int = 640) -> PreTrainedConfig:
    """The HF config of one component reference."""
    if reference.startswith("tiny:"):
        return tiny_config(reference.split(":", 1)[1], vocab_size=vocab_size)
    config = AutoConfig.from_pretrained(resolve(reference, models_dir))
    # A full CLIP/SigLIP checkpoint holds text and vision; the video encoder is the vision half.
    if kind == "video" and hasattr(config, "vision_config"):
        return config.vision_config
    return config


def media_settings(spec: ModelSpec, config: AffectConfig) -> MediaInputSettings:
    """Derive the media preprocessing from the encoder configs."""
    settings = MediaInputSettings(audio_window_seconds=spec.audio_window_seconds)
    if config.audio_config is not None:
        is_whisper = config.audio_config.model_type == "whisper"
        settings.audio_input = "whisper" if is_whisper else "waveform"
        settings.num_mel_bins = getattr(config.audio_config, "num_mel_bins", 80)
    if config.vision_config is not None:
        settings.video_image_size = config.vision_config.image_size
        if config.vision_config.model_type.startswith("clip"):
            settings.video_mean, settings.video_std = CLIP_MEAN, CLIP_STD
    if config.face_config is not None:
        settings.face_image_size = getattr(config.face_config, "image_size", 64)
        settings.face_channels = getattr(config.face_config, "num_channels", 1)
    return settings


def build_tokenizer(spec: ModelSpec, models_dir: Path | None = None):
    if spec.llm.startswith("tiny:"):
        return tiny_tokenizer()
    return AutoTokenizer.from_pretrained(resolve(spec.llm, models_dir))


def build_config(spec: ModelSpec, vocab_size: int, models_dir: Path | None = None) -> AffectConfig:
    """The composite config for ``spec``; component references are kept in ``component_paths``."""
    encoder_configs = {}
    component_paths: dict[str, str | None] = {"llm": None if spec.llm.startswith("tiny:") else spec.llm}
    for modality in MODALITIES:
        reference = spec.encoder_ref(modality)
        if reference is None:
            continue
        encoder_configs[modality] = component_config(reference, modality, models_dir)
        component_paths[modality] = None if reference.startswith("tiny:") else reference
    return AffectConfig(
        text_config=component_config(spec.llm, "llm", models_dir, vocab_size=vocab_size),
        audio_config=encoder_configs.get("audio"),
        vision_config=encoder_configs.get("video"),
        face_config=encoder_configs.get("face"),
        audio_projector=spec.audio_projector,
        video_projector=spec.video_projector,
        face_projector=spec.face_projector,
        num_audio_tokens=spec.num_audio_tokens,
        num_video_tokens=spec.num_video_tokens,
        num_face_tokens=spec.num_face_tokens,
        audio_window_seconds=spec.audio_window_seconds,
        audio_encoder_layers=spec.audio_encoder_layers,
        component_paths=component_paths,
    )


def build_model(
    spec: ModelSpec, models_dir: Path | None = None, seed: int = 0, prompt_version: str | None = None
) -> tuple[AffectForConditionalGeneration, AffectProcessor]:
    """Build model and processor from pretrained parts (and fresh projectors).

    Args:
        prompt_version: Version of ``prompts/tasks`` the processor uses (None: the newest).
    """
    from affect_llm.prompts import load_prompt

    tokenizer = build_tokenizer(spec, models_dir)
    present = [m for m in MODALITIES if spec.encoder_ref(m)]
    num_tokens = {m: getattr(spec, f"num_{m}_tokens") for m in present}
    config = build_config(spec, vocab_size=len(tokenizer) + len(MODALITIES), models_dir=models_dir)
    prompt = load_prompt("tasks", prompt_version)
    processor = AffectProcessor(tokenizer, num_tokens, media_settings(spec, config), prompt)
    for modality, token_id in processor.token_ids().items():
        setattr(config, f"{modality}_token_id", token_id)
    torch.manual_seed(seed)  # projector initialisation is part of what a seed reproduces
    model = instantiate(config, models_dir, spec.precision())
    fit_vocabulary(model, len(tokenizer))
    return model, processor


def instantiate(
    config: AffectConfig, models_dir: Path | None, precision: Precision | None = None
) -> AffectForConditionalGeneration:
    """Build the model, loading every component whose reference is set from its resolved folder."""
    references = dict(config.component_paths or {})
    resolved = {part: resolve(ref, models_dir) for part, ref in references.items() if ref}
    config.component_paths = resolved
    precision = precision or Precision()
    try:
        model = AffectForConditionalGeneration.from_components(config, precision)
    finally:
        config.component_paths = references
    model.config.component_paths = references
    model.config.precision = precision.to_dict()
    return model


def fit_vocabulary(model: AffectForConditionalGeneration, vocab_size: int) -> None:
    """Grow the LLM's embeddings to hold the media tokens the processor added."""
    if model.get_input_embeddings().weight.shape[0] < vocab_size:
        # mean_resizing=False: the new rows are placeholders replaced by media tokens, never read.
        model.language_model.resize_token_embeddings(vocab_size, mean_resizing=False)
    model.config.text_config.vocab_size = model.get_input_embeddings().weight.shape[0]
