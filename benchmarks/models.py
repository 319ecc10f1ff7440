"""The models the benchmarks run, by name; random weights cost exactly what trained ones cost.

- ``resnet18``: U-Net with a ResNet18 encoder (14.3 M parameters), the model of the issue's peer
  comparison.
- ``default``: the shipped default model (``geoseg/data/models/default.pt``) when it is
  installed, else ``resnet18``.
- a path ending in ``.pt`` or ``.ckpt``: that checkpoint (e.g. an earlier default model, to
  compare speeds).
- ``light``: a tiny U-Net (timm's ``test_efficientnet`` encoder, decoder channels 16-8-8-8-8,
  112 k parameters) for the memory benchmarks, where what matters is the pipeline's memory, not
  the network, and scenes of 268-400 Mpx must finish on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KINDS = ("resnet18", "default", "light")


def benchmark_model(kind: str = "resnet18", seed: int = 0) -> Any:
    """A :class:`geoseg.SegmentationModel` for ``kind`` (see the module docstring)."""
    import torch

    from geoseg.model import ModelCard, build_model, default_model_path, load_model
    from geoseg.types import ClassTable

    if kind == "default" and default_model_path().exists():
        return load_model(None)
    if kind.endswith((".pt", ".ckpt", ".onnx")):  # a checkpoint or ONNX file
        return load_model(kind)
    if kind not in KINDS:
        raise SystemExit(f"unknown model {kind!r}; choose one of {', '.join(KINDS)}")
    torch.manual_seed(seed)
    light = kind == "light"
    card = ModelCard(
        arch="unet", encoder="tu-test_efficientnet" if light else "resnet18",
        bands=("red", "green", "blue"), mean=(117.0, 120.0, 108.0), std=(52.0, 50.0, 52.0),
        classes=ClassTable.default(5), tile_size=512,
        name="bench-light-unet" if light else "bench-unet-resnet18",
        arch_kwargs={"decoder_channels": [16, 8, 8, 8, 8]} if light else {},
    )  # fmt: skip
    return build_model(card)


def checkpoint(kind: str, workdir: Path) -> Path:
    """A checkpoint file of the model (the CLI loads it like any other)."""
    from geoseg.model import default_model_path, save_checkpoint

    if kind == "default" and default_model_path().exists():
        return default_model_path()
    path = workdir / f"bench_{'resnet18' if kind == 'default' else kind}.pt"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(benchmark_model(kind), path)
    return path


def describe(model: Any) -> str:
    """``arch/encoder (name)`` of a loaded model."""
    card = model.card
    return f"{card.arch}/{card.encoder} ({card.name})"
