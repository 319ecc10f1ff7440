"""timm's EfficientNet-Lite0/1/2 encoder in plain torch, as smp's U-Net uses it.

The encoder half of :mod:`geoseg.model.nets` (which says why these exist). It mirrors timm and
smp module for module: ``encoder.model.conv_stem``, ``encoder.model.blocks.N.M.conv_pw``, the
same registration order, shapes, initialisation and forward arithmetic (TensorFlow 'same'
padding computed per input, BatchNorm eps 1e-3, ReLU6), so a state dict of smp's encoder loads
with ``strict=True`` and gives the same features.

Sources mirrored: smp 0.6.0 ``encoders/timm_universal.py``; timm 1.0 ``models/efficientnet.py``
(``_gen_efficientnet_lite``, ``EfficientNetFeatures``), ``_efficientnet_builder.py``,
``_efficientnet_blocks.py`` and ``layers/{padding,conv2d_same,norm_act}.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: smp encoder name -> (channel multiplier, depth multiplier), as timm's ``tf_efficientnet_lite*``.
ENCODERS: dict[str, tuple[float, float]] = {
    "tu-tf_efficientnet_lite0": (1.0, 1.0),
    "tu-tf_efficientnet_lite1": (1.0, 1.1),
    "tu-tf_efficientnet_lite2": (1.1, 1.2),
}

ENCODER_DEPTH = 5
OUTPUT_STRIDE = 32
STEM_CHANNELS = 32  # timm's lite models fix the stem (``fix_stem=True``): never scaled
TF_BN_EPS = 1e-3  # timm's ``BN_EPS_TF_DEFAULT``; momentum stays torch's 0.1 for tf_ models


@dataclass(frozen=True)
class _Stage:
    """One stage of timm's ``arch_def``, e.g. ``ir_r2_k3_s2_e6_c24``."""

    kind: str  # "ds": DepthwiseSeparableConv, "ir": InvertedResidual
    repeats: int
    kernel: int
    stride: int
    expansion: int
    channels: int


#: ``_gen_efficientnet_lite``'s arch_def: no squeeze-excitation, no 'noskip'.
_LITE_STAGES: tuple[_Stage, ...] = (
    _Stage("ds", 1, 3, 1, 1, 16),
    _Stage("ir", 2, 3, 2, 6, 24),
    _Stage("ir", 2, 5, 2, 6, 40),
    _Stage("ir", 3, 3, 2, 6, 80),
    _Stage("ir", 3, 5, 1, 6, 112),
    _Stage("ir", 4, 5, 2, 6, 192),
    _Stage("ir", 1, 3, 1, 6, 320),
)


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor``, as timm's ``make_divisible``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def _stage_repeats(index: int, stage: _Stage, depth_multiplier: float) -> int:
    """Blocks in a stage; lite keeps the first and last stage unscaled (``fix_first_last``)."""
    if index in (0, len(_LITE_STAGES) - 1):
        return stage.repeats
    return int(math.ceil(stage.repeats * depth_multiplier))


def _is_feature_stage(index: int) -> bool:
    """Whether timm's features_only network returns this stage's output (the next one strides)."""
    return index == len(_LITE_STAGES) - 1 or _LITE_STAGES[index + 1].stride > 1


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total TensorFlow 'SAME' padding along one axis (timm's ``get_same_padding``)."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow 'SAME' padding computed from each input (timm's Conv2dSame).

    The padding is asymmetric (the extra pixel goes right and bottom) and depends on the input
    size, so it is applied with ``F.pad`` in ``forward`` rather than by the convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` (N, C, H, W) the TensorFlow way, then convolve without padding."""
        height, width = x.shape[-2:]
        pad_h = _same_padding(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_padding(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_conv(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Conv2d:
    """A bias-free 'same' convolution: static padding where possible, else dynamic (timm's rule)."""
    if stride == 1 and (kernel - 1) % 2 == 0:
        padding = (kernel - 1) // 2
        return nn.Conv2d(
            in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False
        )
    return Conv2dSame(in_channels, out_channels, kernel, stride, 0, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm, then ReLU6 or nothing: timm's BatchNorm2d holding ``drop`` and ``act``."""

    def __init__(self, num_features: int, apply_act: bool = True) -> None:
        super().__init__(num_features, eps=TF_BN_EPS)
        self.drop = nn.Identity()
        self.act: nn.Module = nn.ReLU6(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (N, C, H, W), then activate."""
        normalised: torch.Tensor = self.drop(super().forward(x))
        activated: torch.Tensor = self.act(normalised)
        return activated


class DepthwiseSeparableConv(nn.Module):
    """timm's DS block: depthwise conv, BN+ReLU6, pointwise conv, BN (no activation, no SE)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_dw = _same_conv(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = BatchNormAct2d(in_channels)
        self.conv_pw = _same_conv(in_channels, out_channels, 1)
        self.bn2 = BatchNormAct2d(out_channels, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` (N, C, H, W)."""
        out: torch.Tensor = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """timm's IR block: pointwise expansion, depthwise conv, linear projection (no SE)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int
    ) -> None:
        super().__init__()
        mid_channels = make_divisible(in_channels * expansion)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_pw = _same_conv(in_channels, mid_channels, 1)
        self.bn1 = BatchNormAct2d(mid_channels)
        self.conv_dw = _same_conv(mid_channels, mid_channels, kernel, stride, groups=mid_channels)
        self.bn2 = BatchNormAct2d(mid_channels)
        self.conv_pwl = _same_conv(mid_channels, out_channels, 1)
        self.bn3 = BatchNormAct2d(out_channels, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` (N, C, H, W)."""
        out: torch.Tensor = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


def _make_block(stage: _Stage, in_channels: int, out_channels: int, first: bool) -> nn.Module:
    """One block of a stage; only a stage's first block strides."""
    stride = stage.stride if first else 1
    if stage.kind == "ds":
        return DepthwiseSeparableConv(in_channels, out_channels, stage.kernel, stride)
    return InvertedResidual(in_channels, out_channels, stage.kernel, stride, stage.expansion)


def _draw_like_timm_probe() -> None:
    """Draw the random numbers timm's ``EfficientNetBuilder`` draws when it probes its SE layer.

    The builder builds and drops a ``SqueezeExcite(8)`` (two biased 1x1 convolutions) between the
    stem and the blocks. Drawing the same numbers keeps a seed's initial weights identical to
    smp's, so seeded training runs reproduce whichever builder made the network.
    """
    for _ in range(2):
        nn.Conv2d(8, 8, 1)


class EfficientNetLiteFeatures(nn.Module):
    """timm's ``EfficientNetFeatures`` for ``tf_efficientnet_lite*``: stem, 7 stages, 5 features."""

    def __init__(self, in_channels: int, channel_multiplier: float, depth_multiplier: float):
        super().__init__()
        self.conv_stem = _same_conv(in_channels, STEM_CHANNELS, 3, stride=2)
        self.bn1 = BatchNormAct2d(STEM_CHANNELS)
        _draw_like_timm_probe()
        stages: list[nn.Sequential] = []
        self.feature_channels: list[int] = []
        channels = STEM_CHANNELS
        for index, stage in enumerate(_LITE_STAGES):
            out_channels = make_divisible(stage.channels * channel_multiplier)
            blocks = []
            for repeat in range(_stage_repeats(index, stage, depth_multiplier)):
                blocks.append(_make_block(stage, channels, out_channels, first=repeat == 0))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
            if _is_feature_stage(index):
                self.feature_channels.append(out_channels)
        self.blocks = nn.Sequential(*stages)
        self._feature_stages = frozenset(i for i in range(len(stages)) if _is_feature_stage(i))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 2, 4, 8, 16 and 32 of ``x`` (N, C, H, W)."""
        x = self.bn1(self.conv_stem(x))
        features = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in self._feature_stages:
                features.append(x)
        return features


def _init_encoder(module: nn.Module) -> None:
    """As timm's ``_init_weight_goog``: normal convolutions by fan-out, BatchNorm to identity."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            kernel_h, kernel_w = layer.kernel_size
            fan_out = kernel_h * kernel_w * layer.out_channels // layer.groups
            nn.init.normal_(layer.weight, 0, math.sqrt(2.0 / fan_out))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class LiteEncoder(nn.Module):
    """smp's ``TimmUniversalEncoder`` over the lite features: the input, then five features."""

    def __init__(self, encoder: str, in_channels: int) -> None:
        super().__init__()
        channel_multiplier, depth_multiplier = ENCODERS[encoder]
        self.name = encoder.removeprefix("tu-")
        self.model = EfficientNetLiteFeatures(in_channels, channel_multiplier, depth_multiplier)
        _init_encoder(self.model)
        self.out_channels = [in_channels, *self.model.feature_channels]

    @property
    def output_stride(self) -> int:
        """The factor the deepest feature is smaller than the input by (32)."""
        return OUTPUT_STRIDE

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, f2, f4, f8, f16, f32]`` for ``x`` (N, C, H, W)."""
        return [x, *self.model(x)]
