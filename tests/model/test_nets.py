"""geoseg.model.nets against segmentation-models-pytorch + timm: same state dict, same logits."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

from geoseg.errors import ModelError
from geoseg.model.nets import build_unet_efficientnet_lite, supports

smp = pytest.importorskip("segmentation_models_pytorch")

DEFAULT_DECODER = [128, 64, 32, 16, 16]
SMALL_DECODER = [32, 16, 16, 8, 8]

#: (encoder, in_channels, classes, smp Unet keyword arguments); the first is the shipped model's.
CASES: list[tuple[str, int, int, dict[str, Any]]] = [
    ("tu-tf_efficientnet_lite0", 3, 6, {"decoder_channels": DEFAULT_DECODER}),
    ("tu-tf_efficientnet_lite1", 4, 3, {"decoder_channels": SMALL_DECODER}),
    ("tu-tf_efficientnet_lite2", 3, 5, {"decoder_channels": SMALL_DECODER}),
    (
        "tu-tf_efficientnet_lite0",
        3,
        2,
        {
            "decoder_channels": SMALL_DECODER,
            "decoder_use_norm": False,
            "decoder_interpolation": "bilinear",
        },
    ),
]
IDS = ["lite0-default", "lite1-4band", "lite2", "lite0-nonorm-bilinear"]


def _smp_unet(encoder: str, in_channels: int, classes: int, kwargs: dict[str, Any]) -> Any:
    return smp.create_model(
        "unet",
        encoder_name=encoder,
        encoder_weights=None,
        in_channels=in_channels,
        classes=classes,
        **kwargs,
    )


def _randomise_batchnorm(module: torch.nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics, so eps and affine terms are really exercised."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            n = layer.num_features
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
            layer.running_var.copy_(0.01 + 2.0 * torch.rand(n, generator=generator))
            with torch.no_grad():
                layer.weight.copy_(1.0 + 0.3 * torch.randn(n, generator=generator))
                layer.bias.copy_(0.2 * torch.randn(n, generator=generator))


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def pair(request: pytest.FixtureRequest) -> tuple[Any, torch.nn.Module, int]:
    """An smp network with perturbed weights and a geoseg.model.nets copy of its state dict."""
    encoder, in_channels, classes, kwargs = request.param
    torch.manual_seed(0)
    reference = _smp_unet(encoder, in_channels, classes, kwargs)
    _randomise_batchnorm(reference, seed=1)
    ours = build_unet_efficientnet_lite(encoder, in_channels, classes, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours, in_channels


@pytest.mark.parametrize(("encoder", "in_channels", "classes", "kwargs"), CASES, ids=IDS)
def test_state_dict_matches_smp(
    encoder: str, in_channels: int, classes: int, kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    reference = _smp_unet(encoder, in_channels, classes, kwargs).state_dict()
    torch.manual_seed(0)
    ours = build_unet_efficientnet_lite(encoder, in_channels, classes, **kwargs).state_dict()
    assert list(ours) == list(reference)  # same keys in the same order
    for key, tensor in reference.items():
        assert ours[key].shape == tensor.shape, key
        assert ours[key].dtype == tensor.dtype, key
        # smp and timm's initialisation, drawn in the same order from the same seed
        assert torch.equal(ours[key], tensor), key


@pytest.mark.parametrize("shape", [(1, 64, 96), (3, 128, 128), (2, 70, 101)])
@torch.no_grad()
def test_eval_forward_matches_smp(
    pair: tuple[Any, torch.nn.Module, int], shape: tuple[int, int, int]
) -> None:
    reference, ours, in_channels = pair
    reference.eval()
    ours.eval()
    batch, height, width = shape
    x = torch.randn(batch, in_channels, height, width, generator=torch.Generator().manual_seed(2))
    expected = reference(x)
    actual = ours(x)
    assert actual.shape == expected.shape == (batch, expected.shape[1], height, width)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_train_forward_matches_smp(pair: tuple[Any, torch.nn.Module, int]) -> None:
    reference, ours, in_channels = pair
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.train()
    ours.train()
    x = torch.randn(2, in_channels, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
    # BatchNorm running statistics move the same way too
    torch.testing.assert_close(ours.state_dict(), reference.state_dict(), atol=1e-6, rtol=1e-6)


def test_exposes_what_geoseg_reads() -> None:
    module = build_unet_efficientnet_lite("tu-tf_efficientnet_lite0", 3, 6, DEFAULT_DECODER)
    assert module.encoder.output_stride == 32
    head = module.segmentation_head
    assert isinstance(head, torch.nn.Sequential)
    assert isinstance(head[0], torch.nn.Conv2d) and head[0].bias is not None
    assert head[0].out_channels == 6
    names = set(module.state_dict())
    for key in (
        "encoder.model.conv_stem.weight",
        "encoder.model.bn1.running_var",
        "encoder.model.blocks.0.0.conv_dw.weight",
        "encoder.model.blocks.6.0.bn3.weight",
    ):
        assert key in names
    assert module.encoder.model.state_dict().keys() == {
        k.removeprefix("encoder.model.") for k in names if k.startswith("encoder.model.")
    }


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs"),
    [
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_channels": DEFAULT_DECODER}),
        ("Unet", "tu-tf_efficientnet_lite2", {}),
        ("unet", "tu-tf_efficientnet_lite1", {"decoder_channels": (64, 32, 16, 8, 8)}),
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_use_norm": "batchnorm"}),
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_attention_type": None, "encoder_depth": 5}),
    ],
)
def test_supports_accepts(arch: str, encoder: str, kwargs: dict[str, Any]) -> None:
    assert supports(arch, encoder, kwargs)


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs"),
    [
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_attention_type": "scse"}),
        ("unet", "resnet18", {}),
        ("fpn", "tu-tf_efficientnet_lite0", {}),
        ("unetplusplus", "tu-tf_efficientnet_lite0", {}),
        ("unet", "tu-tf_efficientnet_lite3", {}),
        ("unet", "tu-tf_efficientnet_lite0", {"encoder_depth": 4}),
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_channels": [64, 32, 16, 8]}),
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_channels": [64, 32, 16, 8, 8.0]}),
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_use_norm": "layernorm"}),
        ("unet", "tu-tf_efficientnet_lite0", {"decoder_use_norm": 1}),
        ("unet", "tu-tf_efficientnet_lite0", {"aux_params": {"classes": 2}}),
        ("unet", "tu-tf_efficientnet_lite0", {"activation": "softmax2d"}),
        ("unet", "tu-tf_efficientnet_lite0", {"drop_path_rate": 0.2}),
    ],
)
def test_supports_refuses(arch: str, encoder: str, kwargs: dict[str, Any]) -> None:
    assert not supports(arch, encoder, kwargs)


def test_build_refuses_what_supports_refuses() -> None:
    with pytest.raises(ModelError, match="segmentation_models_pytorch"):
        build_unet_efficientnet_lite(
            "tu-tf_efficientnet_lite0", 3, 6, decoder_attention_type="scse"
        )


def test_building_imports_neither_smp_nor_timm() -> None:
    code = (
        "import sys; from geoseg.model.nets import build_unet_efficientnet_lite; "
        "build_unet_efficientnet_lite('tu-tf_efficientnet_lite0', 3, 6, "
        "decoder_channels=[128, 64, 32, 16, 16]); "
        "print(sorted(m for m in ('timm', 'segmentation_models_pytorch', 'torchvision') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert result.stdout.strip() == "[]"
