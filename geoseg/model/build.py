"""Building segmentation networks: smp architectures by name, a module paired with its card."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geoseg.errors import ModelError

if TYPE_CHECKING:
    import torch

from geoseg.model.card import ARCHITECTURES, ModelCard


class SegmentationModel:
    """A torch module paired with its :class:`ModelCard`.

    Any ``torch.nn.Module`` mapping ``(N, C, H, W)`` float inputs to ``(N, K, H, W)`` logits works,
    so users (and tests) can bring their own network.
    """

    def __init__(self, module: torch.nn.Module, card: ModelCard) -> None:
        self.module = module
        self.card = card

    def __repr__(self) -> str:
        card = self.card
        return f"SegmentationModel({card.arch}/{card.encoder}, {card.num_classes} classes)"


def canonical_arch(arch: str) -> str:
    """The smp architecture name for ``arch`` (case-insensitive aliases accepted)."""
    key = arch.lower().replace("_", "").replace("-", "")
    if key not in ARCHITECTURES:
        choices = ", ".join(sorted(set(ARCHITECTURES.values())))
        raise ModelError(f"unknown architecture {arch!r}; choose one of: {choices}")
    return ARCHITECTURES[key]


def create_module(
    arch: str,
    encoder: str,
    in_channels: int,
    num_classes: int,
    *,
    encoder_weights: str | None = None,
    **arch_kwargs: Any,
) -> torch.nn.Module:
    """Build an smp network (U-Net, DeepLabV3+, FPN, PSPNet, ...) with any smp/timm encoder.

    ``encoder_weights`` defaults to ``None``: geoseg never downloads weights by itself. The
    default model's family (U-Net on EfficientNet-Lite) is built by :mod:`geoseg.model.nets` in
    plain torch, the same network without importing smp, timm and torchvision (seconds of start-up).
    """
    from geoseg.model import nets

    name = canonical_arch(arch)
    if encoder_weights is None and nets.supports(name, encoder, arch_kwargs):
        return nets.build_unet_efficientnet_lite(encoder, in_channels, num_classes, **arch_kwargs)
    import segmentation_models_pytorch as smp

    try:
        module: torch.nn.Module = smp.create_model(
            name,
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **arch_kwargs,
        )
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(
            f"cannot build {name} with encoder {encoder!r}: {exc}. Encoder names are smp's "
            "(e.g. resnet18, mobilenet_v2, efficientnet-b0) or timm's with a 'tu-' prefix."
        ) from exc
    return module


def output_stride_of(module: torch.nn.Module) -> int:
    """The factor tile sizes must be divisible by (the encoder's output stride, 1 if none)."""
    encoder = getattr(module, "encoder", None)
    stride = getattr(encoder, "output_stride", None)
    if stride is None:
        return 1 if encoder is None else 32
    return int(stride)


def build_model(card: ModelCard) -> SegmentationModel:
    """A freshly initialised model for a card (random weights; training starts here)."""
    module = create_module(
        card.arch, card.encoder, card.in_channels, card.num_classes, **dict(card.arch_kwargs)
    )
    stride = output_stride_of(module)
    if stride != card.output_stride:
        card = dataclasses.replace(card, output_stride=stride)
    return SegmentationModel(module, card)


def fold_temperature(module: torch.nn.Module, temperature: float) -> None:
    """Divide the network's logits by ``temperature`` by scaling its last convolution.

    As for :func:`fold_logit_offsets`, the head's upsampling and identity activation are linear,
    so ``softmax(logits / T)`` needs no step outside the network (and its ONNX export).
    """
    import torch

    if not temperature > 0:
        raise ModelError(f"temperature must be positive, got {temperature!r}")
    conv = _head_conv(module, "a temperature")
    with torch.no_grad():
        conv.weight.div_(temperature)
        if conv.bias is not None:
            conv.bias.div_(temperature)


def _head_conv(module: torch.nn.Module, what: str) -> torch.nn.Conv2d:
    """The last convolution of an smp network's ``segmentation_head``, with a bias."""
    import torch

    head = getattr(module, "segmentation_head", None)
    conv = head[0] if isinstance(head, torch.nn.Sequential) and len(head) else None
    if not isinstance(conv, torch.nn.Conv2d) or conv.bias is None:
        raise ModelError(
            f"cannot apply {what}: the network has no segmentation_head convolution with a "
            "bias (only smp architectures are supported)"
        )
    return conv


def fold_logit_offsets(module: torch.nn.Module, offsets: Sequence[float]) -> None:
    """Add a constant per class to the network's logits by shifting its last convolution's bias.

    smp networks end in ``segmentation_head``: a convolution, then an optional bilinear upsampling
    (whose weights sum to one, so it passes a constant through) and an identity activation.
    Shifting the bias therefore shifts every output logit of class ``k`` by ``offsets[k]``.
    """
    import torch

    conv = _head_conv(module, "logit offsets")
    assert conv.bias is not None
    if conv.out_channels != len(offsets):
        raise ModelError(
            f"{len(offsets)} logit offsets given for a network with {conv.out_channels} classes"
        )
    with torch.no_grad():
        conv.bias.add_(torch.tensor(list(offsets), dtype=conv.bias.dtype, device=conv.bias.device))
