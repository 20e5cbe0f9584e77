"""``AffectForConditionalGeneration``: encoders -> projectors -> a causal LLM, merged by placeholders.

The processor writes ``N`` placeholder tokens per media item into ``input_ids``; the model swaps the
embeddings of those positions for projected media tokens with one ``masked_scatter`` per modality.
Media arrive as one typed object (:class:`~affect_llm.modeling.media.MediaInputs`): per modality,
encoder inputs or cached encoder features. A modality absent from a batch contributes no tokens.

Shape letters: B batch, L tokens, N items, T steps, D width.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from affect_llm.configuration import MODALITIES, AffectConfig
from affect_llm.modeling.answer_loss import answer_token_loss
from affect_llm.modeling.encoders import build_encoder, encode_audio, encode_frames, encoder_output_dim
from affect_llm.modeling.media import MediaInputs, ModalityInput
from affect_llm.modeling.pretrained import (
    load_affect_checkpoint,
    load_embedding_table_only,
    load_language_model,
    save_affect_checkpoint,
)
from affect_llm.modeling.projectors import EXPRESSION_LOGITS_GAIN, MediaProjector
from affect_llm.precision import Precision


def merge_media_tokens(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, media_tokens: torch.Tensor, modality: str
) -> torch.Tensor:
    """Place ``(N, n, D)`` media tokens at the ``token_id`` positions of ``(B, L, D)`` embeddings."""
    placeholder = input_ids == token_id  # (B, L)
    num_placeholders = int(placeholder.sum())
    num_media_tokens = media_tokens.shape[0] * media_tokens.shape[1]
    if num_placeholders != num_media_tokens:
        raise ValueError(
            f"{modality}: the prompt holds {num_placeholders} placeholder tokens but the media give "
            f"{num_media_tokens} tokens ({media_tokens.shape[0]} items x {media_tokens.shape[1]})"
        )
    mask = placeholder.unsqueeze(-1).expand_as(inputs_embeds)
    return inputs_embeds.masked_scatter(mask, media_tokens.to(inputs_embeds.dtype))


def mark_initialized(module: nn.Module) -> None:
    """Flag a loaded part so ``post_init`` leaves it alone.

    ``post_init`` initialises every parameter without the ``_is_hf_initialized`` flag; parts that were
    loaded and then adapted (a shortened position table, fewer layers) would lose their weights.
    """
    for sub in module.modules():
        sub._is_hf_initialized = True
    for tensor in [*module.parameters(), *module.buffers()]:
        tensor._is_hf_initialized = True


class AffectPreTrainedModel(PreTrainedModel):
    config_class = AffectConfig
    base_model_prefix = "affect"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only the projectors are created here; encoders and the LLM initialise themselves.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class AffectForConditionalGeneration(AffectPreTrainedModel, GenerationMixin):
    """Audio + video + face encoders, one projector each, and a causal LLM.

    Args:
        config: The composite config.
        language_model: An already loaded LLM (e.g. quantized with bitsandbytes) to use instead of
            building one from ``config.text_config``.
        encoders: Already loaded encoders by modality, used instead of building from config.
    """

    def __init__(
        self,
        config: AffectConfig,
        language_model: PreTrainedModel | None = None,
        encoders: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(config)
        for part in [language_model, *(encoders or {}).values()]:
            if part is not None:
                mark_initialized(part)
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        llm_dim = config.text_config.hidden_size
        encoders = encoders or {}
        self.encoders = nn.ModuleDict()
        self.projectors = nn.ModuleDict()
        for modality in config.modalities:
            encoder_config = config.encoder_config(modality)
            self.encoders[modality] = encoders.get(modality) or build_encoder(
                encoder_config, audio_window_seconds=config.audio_window_seconds,
                num_layers=config.audio_layers_kept() if modality == "audio" else None,
            )
            feature_layers = len(config.audio_feature_layers or [0]) if modality == "audio" else 1
            expression_logits = config.reads_expression_logits(modality)
            if expression_logits:
                feature_dim = encoder_config.num_labels
            else:
                feature_dim = encoder_output_dim(encoder_config, feature_layers)
            self.projectors[modality] = MediaProjector(
                getattr(config, f"{modality}_projector"),
                feature_dim,
                llm_dim,
                config.num_tokens(modality),
                normalize_items=not expression_logits,
                input_gain=EXPRESSION_LOGITS_GAIN if expression_logits else 1.0,
            )
        self.post_init()

    # -- standard accessors so resize_token_embeddings, generate and peft work ----------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    # -- media -----------------------------------------------------------------------------------
    def get_media_features(
        self, modality: str, values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder outputs before projection: ``(features (N, T, D_enc), mask (N, T))``."""
        if modality not in self.encoders:
            raise ValueError(f"this model has no {modality} encoder (it has {list(self.encoders)})")
        encoder = self.encoders[modality]
        values = values.to(dtype=next(encoder.parameters()).dtype)
        if modality == "audio":
            return encode_audio(encoder, values, attention_mask, self.config.audio_feature_layers)
        return encode_frames(encoder, values, expression_logits=self.config.reads_expression_logits(modality),
                             frame_mask=attention_mask)

    def project_media_features(self, modality: str, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(N, T, D_enc)`` features -> ``(N, num_tokens, D_llm)`` LLM tokens."""
        projector = self.projectors[modality]
        features = features.to(dtype=next(projector.parameters()).dtype)
        return projector(features, mask.bool())

    def media_tokens(self, modality: str, media: ModalityInput) -> torch.Tensor:
        """``(N, num_tokens, D_llm)`` projected tokens of one modality, from encoder inputs or features."""
        if media.is_features:
            features, mask = media.features, media.feature_mask
        else:
            features, mask = self.get_media_features(modality, media.values, media.attention_mask)
        return self.project_media_features(modality, features, mask)

    def embed_inputs(self, input_ids: torch.Tensor, media: MediaInputs | None = None) -> torch.Tensor:
        """Token embeddings with every media placeholder replaced by its projected media token.

        Raises:
            ValueError: If placeholders and media disagree: a modality with placeholders but no
                media, media for a modality this model has no encoder for, or counts that differ.
        """
        media = media or MediaInputs()
        unknown = [m for m in media.modalities if m not in self.projectors]
        if unknown:
            raise ValueError(f"media for {unknown} given, but this model has encoders for {list(self.projectors)} only")
        inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)
        for modality in MODALITIES:
            token_id = getattr(self.config, f"{modality}_token_id")
            part = media.get(modality)
            if part is None:
                if token_id is not None and bool((input_ids == token_id).any()):
                    raise ValueError(f"{modality}: the prompt holds placeholder tokens but no {modality} input was given")
                continue
            tokens = self.media_tokens(modality, part)
            inputs_embeds = merge_media_tokens(inputs_embeds, input_ids, self.config.token_id(modality), tokens, modality)
        return inputs_embeds

    # -- forward / generate ------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        media: MediaInputs | None = None,
        inputs_embeds: torch.Tensor | None = None,
        sum_answer_loss: bool = False,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward; ``media`` fills the placeholders of ``input_ids`` (other kwargs go to the LLM).

        ``sum_answer_loss`` (training): return only ``loss``, the summed cross-entropy of the tokens
        ``labels`` marks, computed without a whole batch's logits (:mod:`affect_llm.modeling.answer_loss`).
        It runs inside this forward so that DDP and FSDP wrappers see one call.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, media)
        if sum_answer_loss:
            if labels is None:
                raise ValueError("sum_answer_loss needs labels")
            return CausalLMOutputWithPast(
                loss=answer_token_loss(self.language_model, inputs_embeds, attention_mask, labels, **kwargs))
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, media: MediaInputs | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generate from a prompt with media; returns only the new tokens (no prompt echo)."""
        inputs_embeds = self.embed_inputs(input_ids, media)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    # -- construction from parts, the checkpoint format --------------------------------------------------
    @classmethod
    def from_components(
        cls, config: AffectConfig, precision: Precision | None = None, embeddings_only: bool = False
    ) -> AffectForConditionalGeneration:
        """Build the model, loading each part named in ``config.component_paths`` (resolved folders or hub ids).

        Parts without a path are built from their config with random weights (tests, new projectors).
        ``precision`` (see :mod:`affect_llm.precision`) decides the LLM's dtype and 4-bit
        quantization and the encoders' dtype; projectors stay float32. ``embeddings_only`` loads
        only the LLM's embedding table (the prompt embedder of an external engine).
        """
        precision = precision or Precision()
        paths = config.component_paths or {}
        vocab_size = config.text_config.vocab_size
        language_model = None
        if paths.get("llm"):
            load = load_embedding_table_only if embeddings_only else load_language_model
            language_model = load(paths["llm"], replace(precision, quantization="none") if embeddings_only
                                  else precision)
        if language_model is not None:
            config.text_config = language_model.config
        elif precision.is_4bit:
            raise ValueError("4-bit quantization needs an LLM loaded from weights; this one is built from its config")
        encoders = {
            modality: build_encoder(
                config.encoder_config(modality), paths[modality], config.audio_window_seconds,
                num_layers=config.audio_layers_kept() if modality == "audio" else None,
                dtype=precision.encoder_torch_dtype(),
            )
            for modality in config.modalities if paths.get(modality)
        }
        model = cls(config, language_model=language_model, encoders=encoders)
        if language_model is None:
            model.language_model.to(precision.llm_torch_dtype())
        for modality, encoder in model.encoders.items():
            if modality not in encoders:
                encoder.to(precision.encoder_torch_dtype())
        model.fit_vocabulary(vocab_size)
        model.config.precision = precision.to_dict()
        return model

    def fit_vocabulary(self, vocab_size: int) -> None:
        """Grow the LLM's embeddings to hold the media tokens the processor added.

        The new rows are placeholders, replaced by media tokens before the LLM reads them; they are
        zeroed (not random) so the head gives media tokens the same logit on every load.
        """
        embeddings = self.get_input_embeddings()
        old_size = embeddings.weight.shape[0]
        if old_size < vocab_size:
            self.language_model.resize_token_embeddings(vocab_size, mean_resizing=False)
            with torch.no_grad():
                self.get_input_embeddings().weight[old_size:] = 0
                head = self.get_output_embeddings()
                if head is not None and head.weight.shape[0] == vocab_size:
                    head.weight[old_size:] = 0
        self.config.text_config.vocab_size = self.get_input_embeddings().weight.shape[0]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> AffectForConditionalGeneration:
        """Load a checkpoint folder; what ``AutoModelForCausalLM.from_pretrained`` calls.

        Keyword arguments: ``precision`` (:class:`~affect_llm.precision.Precision`, default: what
        the checkpoint records) or ``dtype``; ``models_dir`` (where embedded references resolve);
        ``trainable_lora``; ``dequantize``; ``device_map`` (one device). See
        :func:`affect_llm.modeling.pretrained.load_affect_checkpoint`.
        """
        return load_affect_checkpoint(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """Write the checkpoint format :meth:`from_pretrained` reads (see :mod:`affect_llm.modeling.pretrained`)."""
        save_affect_checkpoint(self, save_directory, **kwargs)


AutoModel.register(AffectConfig, AffectForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(AffectConfig, AffectForConditionalGeneration, exist_ok=True)
