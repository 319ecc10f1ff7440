"""The default network family in plain torch: smp's U-Net on timm's EfficientNet-Lite0/1/2.

Why this exists: start-up time. Building the shipped default model through
segmentation-models-pytorch imports timm, torchvision and huggingface_hub, about 4 s on top of
torch itself, before ``geoseg run`` can read its first tile. This module rebuilds exactly that
network family, ``Unet(encoder_name="tu-tf_efficientnet_lite{0,1,2}")``, with nothing but torch.

It mirrors smp and timm module for module: the same module names (``encoder.model.conv_stem``,
``encoder.model.blocks.N.M.conv_pw``, ``decoder.blocks.N.conv1.0``, ``segmentation_head.0``), the
same registration order, shapes, dtypes, initialisation and forward arithmetic (TensorFlow 'same'
padding computed per input, BatchNorm eps 1e-3 in the encoder, ReLU6, nearest upsampling). A state
dict saved from the smp network therefore loads with ``strict=True`` and gives the same logits;
``tests/model/test_nets.py`` proves both against smp and timm themselves. :func:`supports` says
which model cards this builder covers; everything else goes to smp.

Sources mirrored: smp 0.6.0 ``decoders/unet``, ``base/{heads,modules,initialization}.py``,
``encoders/timm_universal.py``; timm 1.0 ``models/efficientnet.py`` (``_gen_efficientnet_lite``,
``EfficientNetFeatures``), ``_efficientnet_builder.py``, ``_efficientnet_blocks.py`` and
``layers/{padding,conv2d_same,norm_act}.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.errors import ModelError

#: smp encoder name -> (channel multiplier, depth multiplier), as timm's ``tf_efficientnet_lite*``.
ENCODERS: dict[str, tuple[float, float]] = {
    "tu-tf_efficientnet_lite0": (1.0, 1.0),
    "tu-tf_efficientnet_lite1": (1.0, 1.1),
    "tu-tf_efficientnet_lite2": (1.1, 1.2),
}

#: smp ``Unet`` keyword arguments this builder implements, with the values it accepts.
_ACCEPTED: dict[str, tuple[Any, ...]] = {
    "encoder_depth": (5,),
    "decoder_use_norm": (True, False, "batchnorm", "identity"),
    "decoder_attention_type": (None,),
    "decoder_interpolation": ("nearest", "bilinear", "bicubic", "area", "nearest-exact"),
    "activation": (None, "identity"),
    "aux_params": (None,),
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


def _conv_norm_relu(in_channels: int, out_channels: int, use_norm: bool) -> nn.Sequential:
    """As smp's ``Conv2dReLU``: 3x3 conv (biased only without norm), BatchNorm or nothing, ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not use_norm)
    norm: nn.Module = nn.BatchNorm2d(out_channels) if use_norm else nn.Identity()
    return nn.Sequential(conv, norm, nn.ReLU(inplace=True))


class UnetDecoderBlock(nn.Module):
    """smp's ``UnetDecoderBlock`` without attention: upsample, concatenate the skip, two convs."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        use_norm: bool,
        interpolation_mode: str,
    ) -> None:
        super().__init__()
        self.interpolation_mode = interpolation_mode
        self.conv1 = _conv_norm_relu(in_channels + skip_channels, out_channels, use_norm)
        self.conv2 = _conv_norm_relu(out_channels, out_channels, use_norm)

    def forward(
        self, x: torch.Tensor, height: int, width: int, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Upsample ``x`` to (height, width), join ``skip`` along channels, convolve twice."""
        x = F.interpolate(x, size=(height, width), mode=self.interpolation_mode)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        out: torch.Tensor = self.conv2(self.conv1(x))
        return out


class UnetDecoder(nn.Module):
    """smp's ``UnetDecoder`` (no centre block, which smp adds for VGG encoders only)."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        use_norm: bool,
        interpolation_mode: str,
    ) -> None:
        super().__init__()
        # The first encoder feature is the input itself: it sets the output size, not a skip.
        deepest_first = list(encoder_channels[1:])[::-1]
        in_channels = [deepest_first[0], *decoder_channels[:-1]]
        skip_channels = [*deepest_first[1:], 0]
        self.center = nn.Identity()
        self.blocks = nn.ModuleList(
            UnetDecoderBlock(block_in, block_skip, block_out, use_norm, interpolation_mode)
            for block_in, block_skip, block_out in zip(
                in_channels, skip_channels, decoder_channels, strict=True
            )
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decode ``[input, f2, ..., f32]`` into (N, decoder_channels[-1], H, W)."""
        sizes = [feature.shape[2:] for feature in features][::-1]
        deepest_first = features[1:][::-1]
        skips = deepest_first[1:]
        x: torch.Tensor = self.center(deepest_first[0])
        for index, block in enumerate(self.blocks):
            height, width = sizes[index + 1]
            skip = skips[index] if index < len(skips) else None
            # no int(): under ONNX tracing the sizes stay symbolic, so any tile size exports
            x = block(x, height, width, skip)
        return x


def _init_decoder(module: nn.Module) -> None:
    """As smp's ``initialize_decoder``: Kaiming-uniform convs, zero biases, unit BatchNorm."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_uniform_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.constant_(layer.weight, 1)
            nn.init.constant_(layer.bias, 0)


def _segmentation_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """As smp's ``SegmentationHead``: a biased 3x3 conv, no upsampling, identity activation."""
    conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)
    return nn.Sequential(conv, nn.Identity(), nn.Identity())


def _init_head(module: nn.Module) -> None:
    """As smp's ``initialize_head``: Xavier-uniform convolutions, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0)


class UnetEfficientNetLite(nn.Module):
    """smp's ``Unet`` on ``tu-tf_efficientnet_lite*``: encoder, decoder, segmentation_head."""

    def __init__(
        self,
        encoder: str,
        in_channels: int,
        num_classes: int,
        decoder_channels: Sequence[int],
        use_norm: bool,
        interpolation_mode: str,
    ) -> None:
        super().__init__()
        self.encoder = LiteEncoder(encoder, in_channels)
        self.decoder = UnetDecoder(
            self.encoder.out_channels, decoder_channels, use_norm, interpolation_mode
        )
        self.segmentation_head = _segmentation_head(decoder_channels[-1], num_classes)
        self.name = f"u-{encoder}"
        # After building both, as smp does, so a seed draws the same random numbers as smp.
        _init_decoder(self.decoder)
        _init_head(self.segmentation_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes, H, W) for ``x`` (N, C, H, W); H and W multiples of 32."""
        logits: torch.Tensor = self.segmentation_head(self.decoder(self.encoder(x)))
        return logits


def _accepted(arch_kwargs: Mapping[str, Any]) -> bool:
    """Whether every keyword argument is one this builder implements, with a value it covers."""
    for key, value in arch_kwargs.items():
        if key == "decoder_channels":
            if not _valid_decoder_channels(value):
                return False
        elif key not in _ACCEPTED or not any(_same(value, c) for c in _ACCEPTED[key]):
            return False
    return True


def _same(value: Any, choice: Any) -> bool:
    """Equal and of the same type, so that ``1`` is not taken for ``True`` nor ``5.0`` for ``5``."""
    return type(value) is type(choice) and bool(value == choice)


def _valid_decoder_channels(value: Any) -> bool:
    """Five positive integer channel counts, one per decoder block."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return False
    counts = list(value)
    return len(counts) == ENCODER_DEPTH and all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts
    )


def supports(arch: str, encoder: str, arch_kwargs: Mapping[str, Any]) -> bool:
    """Whether :func:`build_unet_efficientnet_lite` builds this model card's network exactly.

    Args:
        arch: The card's architecture name; only smp's ``"unet"`` is covered.
        encoder: The smp encoder name, one of :data:`ENCODERS`.
        arch_kwargs: Further smp ``Unet`` arguments. Any key or value this module does not
            implement (attention, another depth, an auxiliary head, timm options) refuses the
            card, so the caller builds it with smp instead.

    Returns:
        True when the card can be built here, False when smp must build it.
    """
    return arch.lower() == "unet" and encoder in ENCODERS and _accepted(arch_kwargs)


def build_unet_efficientnet_lite(
    encoder: str,
    in_channels: int,
    num_classes: int,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    **kwargs: Any,
) -> nn.Module:
    """Build smp's ``Unet(encoder_name=encoder)`` for an EfficientNet-Lite encoder, without smp.

    The result has smp's state dict keys, shapes and dtypes, and its forward pass; weights are
    initialised as smp and timm initialise them (random, never downloaded).

    Args:
        encoder: ``"tu-tf_efficientnet_lite0"``, ``"tu-tf_efficientnet_lite1"`` or
            ``"tu-tf_efficientnet_lite2"``.
        in_channels: Input bands C of the (N, C, H, W) input.
        num_classes: Output logits per pixel.
        decoder_channels: Output channels of the five decoder blocks, deepest first.
        **kwargs: Other smp ``Unet`` arguments :func:`supports` accepts: ``decoder_use_norm``,
            ``decoder_interpolation``, and the defaults of ``encoder_depth``,
            ``decoder_attention_type``, ``activation`` and ``aux_params``.

    Returns:
        The network; ``module.encoder.output_stride`` is 32 and ``module.segmentation_head[0]``
        its final, biased convolution.

    Raises:
        ModelError: when the configuration is one :func:`supports` refuses.
    """
    arch_kwargs = {"decoder_channels": decoder_channels, **kwargs}
    if not supports("unet", encoder, arch_kwargs):
        raise ModelError(
            f"geoseg.model.nets cannot build unet/{encoder} with {arch_kwargs}: it covers "
            f"{', '.join(ENCODERS)} with {', '.join(_ACCEPTED)}; build it with "
            "segmentation_models_pytorch instead."
        )
    return UnetEfficientNetLite(
        encoder,
        in_channels,
        num_classes,
        list(decoder_channels),
        use_norm=kwargs.get("decoder_use_norm", "batchnorm") in (True, "batchnorm"),
        interpolation_mode=str(kwargs.get("decoder_interpolation", "nearest")),
    )
