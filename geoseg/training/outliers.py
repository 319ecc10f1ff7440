"""Outlier exposure: crops a model must not be sure about, and the loss that teaches it so.

A model trained on well-formed scenes alone is as confident on a scene it cannot read (the
bands in the wrong order, a false-colour composite) as on its training regions, so a run's
low-confidence share cannot tell the user that the map is unlike anything checked. Outlier
exposure (Hendrycks et al., 2019) shows it, next to the labelled crops, some crops made
unreadable on purpose and asks for the uniform distribution there: the cross-entropy to uniform,
``logsumexp(z) - mean(z)`` per pixel, less its least value ``log K`` (so zero exactly when every
class is equally likely).

The outliers are the batch's own crops with their bands in another order (every
non-identity permutation of the bands): the ground is the same, only what a band means has
changed, which is what a scene fed the wrong bands is. The photometric augmentation rotates hue
by at most ±25° for the whole crop, so it never turns one band order into another. Imported
only by training (it imports torch at the top).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from geoseg.errors import ConfigError


@dataclass(frozen=True)
class OutlierExposure:
    """How many outlier crops a batch gets and how much their loss counts.

    Attributes:
        probability: Chance that a crop of the batch is also shown as an outlier.
        weight: Weight of the outliers' uniform-target loss beside the labelled loss.
    """

    probability: float = 0.25
    weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("probability", "weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"training.outlier_exposure.{name} must be a number")
        if not 0 < self.probability <= 1:
            raise ConfigError(
                f"training.outlier_exposure.probability must be in (0, 1], got {self.probability}"
            )
        if not self.weight > 0:
            raise ConfigError(f"training.outlier_exposure.weight must be > 0, got {self.weight}")

    @classmethod
    def from_config(cls, raw: Any) -> OutlierExposure:
        """From ``training.outlier_exposure`` (a mapping; ``{}`` for the defaults)."""
        if not isinstance(raw, Mapping):
            raise ConfigError(
                "training.outlier_exposure must be a mapping {probability: 0.25, weight: 0.5}, "
                f"got {raw!r}"
            )
        unknown = set(raw) - {"probability", "weight"}
        if unknown:
            raise ConfigError(
                f"training.outlier_exposure has unknown keys {sorted(unknown)}; "
                "allowed: probability, weight"
            )
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, float]:
        """Plain data for the config and hyper-parameters."""
        return {"probability": float(self.probability), "weight": float(self.weight)}

    def outliers(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Outlier crops drawn from the batch ``x`` ``(N, C, H, W)``: ``(M, C, H, W)``, M >= 0.

        Each crop is picked with :attr:`probability` and gets one of the non-identity band
        orders, drawn uniformly. A single-band batch has none.
        """
        orders = band_orders(x.shape[1])
        if not orders:
            return x[:0]
        picked = torch.rand(x.shape[0], generator=generator) < self.probability
        index = picked.nonzero().flatten().tolist()
        if not index:
            return x[:0]
        draws = torch.randint(len(orders), (len(index),), generator=generator).tolist()
        return torch.stack([x[i, list(orders[d])] for i, d in zip(index, draws, strict=True)])


def band_orders(bands: int) -> list[tuple[int, ...]]:
    """Every order of ``bands`` bands but their own (5 for RGB); none for one band."""
    identity = tuple(range(bands))
    return [p for p in itertools.permutations(identity) if p != identity]


def uniform_target_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy to the uniform distribution over classes, ``(N, K, H, W)`` logits.

    ``logsumexp(z) - mean(z) - log K`` per pixel (the cross-entropy to uniform less its least
    value): zero when every class gets ``1 / K``, growing as one class takes over.
    """
    logits = logits.float()
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean() - torch.log(
        torch.tensor(float(logits.shape[1]), device=logits.device)
    )


__all__ = ["OutlierExposure", "band_orders", "uniform_target_loss"]
