"""Build a fresh model and its processor from a :class:`~affect_llm.loading.spec.ModelSpec`.

Pretrained parts load from their references in the spec's precision; projectors are new. References,
not resolved paths, are stored in the config, so a checkpoint moves between machines.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from affect_llm.configuration import MODALITIES, AffectConfig
from affect_llm.loading.spec import ModelSpec
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.tiny import tiny_config, tiny_tokenizer
from affect_llm.precision import Precision
from affect_llm.processing.feature_extraction import AffectFeatureExtractor
from affect_llm.processing.processor import AffectProcessor, prompt_record
from affect_llm.prompts import load_prompt
from affect_llm.references import resolve_model_path


def component_config(reference: str, kind: str, models_dir: Path | None, vocab_size: int = 640) -> PreTrainedConfig:
    """The HF config of one component reference."""
    if reference.startswith("tiny:"):
        return tiny_config(reference.split(":", 1)[1], vocab_size=vocab_size)
    config = AutoConfig.from_pretrained(resolve_model_path(reference, models_dir))
    # A full CLIP/SigLIP checkpoint holds text and vision; the video encoder is the vision half.
    if kind == "video" and hasattr(config, "vision_config"):
        return config.vision_config
    return config


def build_tokenizer(spec: ModelSpec, models_dir: Path | None = None) -> PreTrainedTokenizerBase:
    if spec.llm.startswith("tiny:"):
        return tiny_tokenizer()
    return AutoTokenizer.from_pretrained(resolve_model_path(spec.llm, models_dir))


def build_config(spec: ModelSpec, vocab_size: int, models_dir: Path | None = None) -> AffectConfig:
    """The composite config for ``spec``; component references are kept in ``component_paths``."""
    encoder_configs = {}
    component_paths: dict[str, str | None] = {"llm": None if spec.llm.startswith("tiny:") else spec.llm}
    for modality in spec.modalities:
        reference = spec.encoder_ref(modality)
        encoder_configs[f"{modality}_config"] = component_config(reference, modality, models_dir)
        component_paths[modality] = None if reference.startswith("tiny:") else reference
    return AffectConfig(
        text_config=component_config(spec.llm, "llm", models_dir, vocab_size=vocab_size),
        **encoder_configs,
        audio_projector=spec.audio_projector,
        video_projector=spec.video_projector,
        face_projector=spec.face_projector,
        num_audio_tokens=spec.num_audio_tokens,
        num_video_tokens=spec.num_video_tokens,
        num_face_tokens=spec.num_face_tokens,
        audio_window_seconds=spec.audio_window_seconds,
        audio_encoder_layers=spec.audio_encoder_layers,
        audio_feature_layers=spec.audio_feature_layers,
        face_features=spec.face_features,
        audio_speaker_normalisation=spec.audio_speaker_normalisation,
        component_paths=component_paths,
        precision=spec.precision().to_dict(),
    )


def build_model(
    spec: ModelSpec, models_dir: Path | None = None, seed: int = 0, prompt_version: str | None = None
) -> tuple[AffectForConditionalGeneration, AffectProcessor]:
    """Build model and processor from pretrained parts (and fresh projectors).

    Args:
        prompt_version: Version of the ``tasks`` prompt the processor uses (None: the newest).
    """
    tokenizer = build_tokenizer(spec, models_dir)
    # The processor adds one placeholder token per modality, whichever modalities the model has.
    config = build_config(spec, vocab_size=len(tokenizer) + len(MODALITIES), models_dir=models_dir)
    processor = AffectProcessor(
        AffectFeatureExtractor.for_config(config), tokenizer,
        task_prompt=prompt_record(load_prompt("tasks", prompt_version)), num_tokens=config.token_budgets(),
    )
    for modality, token_id in processor.token_ids().items():
        setattr(config, f"{modality}_token_id", token_id)
    torch.manual_seed(seed)  # projector initialisation is part of what a seed reproduces
    model = instantiate(config, models_dir, spec.precision())
    model.fit_vocabulary(len(tokenizer))
    return model, processor


def instantiate(
    config: AffectConfig, models_dir: Path | None, precision: Precision | None = None
) -> AffectForConditionalGeneration:
    """Build the model, loading every component whose reference is set from its resolved folder."""
    references = dict(config.component_paths or {})
    config.component_paths = {part: resolve_model_path(ref, models_dir) for part, ref in references.items() if ref}
    try:
        model = AffectForConditionalGeneration.from_components(config, precision or Precision())
    finally:
        config.component_paths = references
    model.config.component_paths = references
    return model
