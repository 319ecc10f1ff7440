"""The torch device a run asks for: ``auto`` (CUDA when present), cpu, cuda or cuda:N."""

from __future__ import annotations

import torch

from geoseg.errors import ConfigError


def resolve_device(requested: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    name = requested or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name} was asked for but no CUDA device is available; use --device cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
