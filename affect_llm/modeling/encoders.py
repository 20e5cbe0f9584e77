"""Media encoders: any HF audio encoder or vision tower, plus the face CNN, behind one call.

Each encoder maps a batch of items to ``(features (N_items, T, D_enc), mask (N_items, T))``:
audio keeps its time steps (padding trimmed by the mask), video and face yield one pooled vector
per frame or crop (``T = K``).

Shape letters: N items, K frames per item, S samples, M mel bins, T time steps, D width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel

from affect_llm.modeling.pretrained import PREPARED_REMEDY, weights_read_from


def _unwrap_encoder(model: PreTrainedModel) -> PreTrainedModel:
    # Whisper's AutoModel is encoder + decoder; only the encoder is used.
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder()
    return model


def shorten_whisper_window(encoder: nn.Module, config: PreTrainedConfig, window_seconds: float) -> None:
    """Cut a Whisper encoder's position table so it accepts ``window_seconds`` of audio.

    Whisper insists on exactly 30 s of mel frames; emotion clips are a few seconds. Encoding a
    shorter window with the first positions of the table keeps the pretrained behaviour on the
    audio that is there and costs ``window/30`` of the compute.
    """
    positions = int(round(window_seconds * 50))  # 100 mel frames/s, conv stride 2
    if positions >= config.max_source_positions:
        return
    table = encoder.embed_positions
    weight = table.weight.data[:positions].clone()
    # The new table keeps the loaded one's dtype: a float32 table beside bf16 layers makes every
    # hidden state float32, which the bf16 layer norms after it refuse.
    encoder.embed_positions = nn.Embedding(positions, weight.shape[1], dtype=weight.dtype, device=weight.device)
    encoder.embed_positions.weight.data.copy_(weight)
    encoder.embed_positions.requires_grad_(table.weight.requires_grad)
    config.max_source_positions = positions
    encoder.max_source_positions = positions


def keep_first_layers(encoder: nn.Module, num_layers: int) -> None:
    """Drop every transformer layer after the first ``num_layers`` (the encoder's ``layers`` list).

    Speech encoders trained for recognition wash prosody (pitch, loudness, rate) out of their top
    layers; the middle layers keep it, and skipping the rest also saves their compute.
    """
    for name, module in encoder.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList):
            if num_layers > len(module):
                raise ValueError(f"encoder has {len(module)} layers; cannot keep {num_layers}")
            parent = encoder.get_submodule(name.rsplit(".", 1)[0]) if "." in name else encoder
            parent.layers = nn.ModuleList(list(module)[:num_layers])
            return
    raise ValueError(f"{type(encoder).__name__} has no 'layers' list to shorten")


def build_encoder(
    config: PreTrainedConfig,
    pretrained_path: str | None = None,
    audio_window_seconds: float = 30.0,
    num_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build an encoder from its config, or load it from a pretrained folder or hub id.

    Args:
        num_layers: Keep only the first ``num_layers`` transformer layers (None: all).
        dtype: Weight dtype of a loaded encoder.
    """
    if pretrained_path:
        with weights_read_from(pretrained_path, PREPARED_REMEDY):
            encoder = _unwrap_encoder(AutoModel.from_pretrained(pretrained_path, dtype=dtype))
    elif config.model_type == "whisper":
        # Building the whole encoder-decoder only to drop the decoder wastes its memory.
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        encoder = WhisperEncoder(config)
    else:
        encoder = _unwrap_encoder(AutoModel.from_config(config))
    if config.model_type == "whisper":
        shorten_whisper_window(encoder, encoder.config, audio_window_seconds)
    if num_layers is not None:
        keep_first_layers(encoder, num_layers)
    return encoder


def encoder_output_dim(config: PreTrainedConfig, num_feature_layers: int = 1) -> int:
    """Width of the vectors the encoder yields: its hidden width times the layers concatenated."""
    for name in ("d_model", "hidden_size"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value * num_feature_layers
    raise ValueError(f"cannot tell the output width of a {config.model_type!r} encoder (no d_model/hidden_size)")


def encode_audio(
    encoder: nn.Module, values: torch.Tensor, attention_mask: torch.Tensor | None,
    feature_layers: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode audio: Whisper log-mels ``(N, M, F)`` or raw waveforms ``(N, S)``.

    Args:
        values: Encoder inputs from the processor.
        attention_mask: ``(N, F)`` or ``(N, S)`` validity of the input frames/samples.
        feature_layers: Concatenate the hidden states after these layers (0: the input embeddings;
            the last layer's state is the encoder's normalised output); None: the last layer only.
            Middle layers of a speech recogniser keep prosody its top layers discard, the top layers
            what a real voice's quality says: a projector given both learns the mix.

    Returns:
        ``(features (N, T, D x len(feature_layers)), mask (N, T))`` with padding steps marked False.
    """
    inputs = {"input_features": values} if encoder.config.model_type == "whisper" else {
        "input_values": values, "attention_mask": attention_mask}
    if feature_layers:
        states = encoder(**inputs, output_hidden_states=True).hidden_states
        hidden = torch.cat([states[i] for i in feature_layers], dim=-1)  # (N, T, D x layers)
    else:
        hidden = encoder(**inputs).last_hidden_state  # (N, T, D)
    num_steps = hidden.shape[1]
    if attention_mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    else:
        # The encoder downsamples its input uniformly, so valid steps scale with valid input length.
        valid = attention_mask.sum(-1).float() * num_steps / attention_mask.shape[-1]
        valid = valid.ceil().clamp(min=1).long()
        mask = torch.arange(num_steps, device=hidden.device)[None, :] < valid[:, None]
    return hidden, mask


def encode_frames(
    encoder: nn.Module, values: torch.Tensor, expression_logits: bool = False,
    frame_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``(N, K, C, H, W)`` frames or crops into one vector each: ``(N, K, D)``.

    Args:
        expression_logits: Yield the encoder's expression logits (``D = num_labels``) instead of
            its pooled output; the encoder must return ``logits`` (the FER mini-Xception does).
        frame_mask: ``(N, K)`` validity of the frames (padding False); None: every frame is real.
    """
    n_items, n_frames = values.shape[:2]
    flat = values.flatten(0, 1)  # (N*K, C, H, W)
    output = encoder(pixel_values=flat)
    if expression_logits:
        pooled = getattr(output, "logits", None)
        if pooled is None:
            raise ValueError(f"{type(encoder).__name__} returns no expression logits")
    else:
        pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = output.last_hidden_state.mean(dim=1)
    features = pooled.reshape(n_items, n_frames, -1)  # (N, K, D)
    if frame_mask is not None:
        return features, frame_mask.to(device=features.device, dtype=torch.bool)
    return features, torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
