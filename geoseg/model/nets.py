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
which model cards this builder covers; everything else goes to smp. The encoder lives in
:mod:`geoseg.model.efficientnet_lite`; this module holds the U-Net decoder, the segmentation head
and their assembly.

Sources mirrored here: smp 0.6.0 ``decoders/unet`` and ``base/{heads,modules,initialization}.py``
(the encoder module names its timm sources).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.errors import ModelError
from geoseg.model.efficientnet_lite import ENCODER_DEPTH, ENCODERS, LiteEncoder

#: smp ``Unet`` keyword arguments this builder implements, with the values it accepts.
_ACCEPTED: dict[str, tuple[Any, ...]] = {
    "encoder_depth": (5,),
    "decoder_use_norm": (True, False, "batchnorm", "identity"),
    "decoder_attention_type": (None,),
    "decoder_interpolation": ("nearest", "bilinear", "bicubic", "area", "nearest-exact"),
    "activation": (None, "identity"),
    "aux_params": (None,),
}


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
        encoder: The smp encoder name, one of
            :data:`~geoseg.model.efficientnet_lite.ENCODERS`.
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
