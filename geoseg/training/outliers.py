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
by at most ±25° for the whole crop, so it never turns one band order into another. A pixel whose
bands are nearly equal (a grey road, a roof, a shadow) looks the same in every band order, so the
uniform target would contradict its own label there: the loss counts only the pixels that the new
order changed by at least ``min_change`` (normalised units) in some band. Imported only by
training (it imports torch at the top).
"""

from __future__ import annotations

import itertools
import math
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
        weight: Weight of the outliers' loss (:meth:`loss`) beside the labelled loss.
        min_change: Least change of a pixel in some band, in normalised units, for the loss to
            count it (0.1 is about 13 grey levels with the default model's std of 127.5); 0
            counts every pixel.
        max_confidence: None asks for the uniform distribution on the outliers; a number asks
            only that no class get more than that probability (:func:`capped_confidence_loss`),
            a weaker demand that leaves the model free below it.
    """

    probability: float = 0.25
    weight: float = 0.5
    min_change: float = 0.1
    max_confidence: float | None = None

    def __post_init__(self) -> None:
        for name in ("probability", "weight", "min_change"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"training.outlier_exposure.{name} must be a number")
        if not 0 < self.probability <= 1:
            raise ConfigError(
                f"training.outlier_exposure.probability must be in (0, 1], got {self.probability}"
            )
        if not self.weight > 0:
            raise ConfigError(f"training.outlier_exposure.weight must be > 0, got {self.weight}")
        if not self.min_change >= 0:
            raise ConfigError(
                f"training.outlier_exposure.min_change must be >= 0, got {self.min_change}"
            )
        cap = self.max_confidence
        if cap is not None and (
            isinstance(cap, bool) or not isinstance(cap, int | float) or not 0 < cap < 1
        ):
            raise ConfigError(
                f"training.outlier_exposure.max_confidence must be a number in (0, 1), got {cap!r}"
            )

    @classmethod
    def from_config(cls, raw: Any) -> OutlierExposure:
        """From ``training.outlier_exposure`` (a mapping; ``{}`` for the defaults)."""
        if not isinstance(raw, Mapping):
            raise ConfigError(
                "training.outlier_exposure must be a mapping "
                f"{{probability: 0.25, weight: 0.5, min_change: 0.1}}, got {raw!r}"
            )
        unknown = set(raw) - {"probability", "weight", "min_change", "max_confidence"}
        if unknown:
            raise ConfigError(
                f"training.outlier_exposure has unknown keys {sorted(unknown)}; "
                "allowed: probability, weight, min_change, max_confidence"
            )
        return cls(**dict(raw))

    def to_dict(self) -> dict[str, float]:
        """Plain data for the config and hyper-parameters (``max_confidence`` only when set)."""
        out = {
            "probability": float(self.probability),
            "weight": float(self.weight),
            "min_change": float(self.min_change),
        }
        if self.max_confidence is not None:
            out["max_confidence"] = float(self.max_confidence)
        return out

    def loss(self, logits: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        """The outliers' loss (unweighted) over their ``counted`` pixels."""
        if self.max_confidence is None:
            return uniform_target_loss(logits, counted)
        return capped_confidence_loss(logits, self.max_confidence, counted)

    def outliers(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outlier crops drawn from the batch ``x`` ``(N, C, H, W)`` and where they count.

        Returns ``(crops, counted)``: ``(M, C, H, W)`` crops, M >= 0, and a boolean
        ``(M, H, W)`` mask of the pixels the band order changed by at least
        :attr:`min_change`. Each crop is picked with :attr:`probability` and gets one of the
        non-identity band orders, drawn uniformly. A single-band batch has none.
        """
        orders = band_orders(x.shape[1])
        if not orders:
            return no_outliers(x)
        picked = torch.rand(x.shape[0], generator=generator) < self.probability
        index = picked.nonzero().flatten().tolist()
        if not index:
            return no_outliers(x)
        draws = torch.randint(len(orders), (len(index),), generator=generator).tolist()
        crops = torch.stack([x[i, list(orders[d])] for i, d in zip(index, draws, strict=True)])
        change = (crops - x[index]).abs().amax(dim=1)
        return crops, change >= self.min_change


def no_outliers(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """No outlier crops for batch ``x``: ``(0, C, H, W)`` crops and a ``(0, H, W)`` mask."""
    return x[:0], torch.zeros((0, *x.shape[2:]), dtype=torch.bool, device=x.device)


def band_orders(bands: int) -> list[tuple[int, ...]]:
    """Every order of ``bands`` bands but their own (5 for RGB); none for one band."""
    identity = tuple(range(bands))
    return [p for p in itertools.permutations(identity) if p != identity]


def uniform_target_loss(logits: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy to the uniform distribution over classes, ``(N, K, H, W)`` logits.

    ``logsumexp(z) - mean(z) - log K`` per pixel (the cross-entropy to uniform less its least
    value): zero when every class gets ``1 / K``, growing as one class takes over. With
    ``counted`` (boolean ``(N, H, W)``) the mean is over those pixels only (zero when none is).
    """
    logits = logits.float()
    per_pixel = (
        torch.logsumexp(logits, dim=1)
        - logits.mean(dim=1)
        - torch.log(torch.tensor(float(logits.shape[1]), device=logits.device))
    )
    return _masked_mean(per_pixel, counted)


def capped_confidence_loss(
    logits: torch.Tensor, cap: float, counted: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``max(0, log p_max - log cap)`` per pixel, ``(N, K, H, W)`` logits.

    Zero wherever no class has more than ``cap`` probability; above it, the top class's
    log-probability is pushed down (and only it). ``counted`` as in :func:`uniform_target_loss`.
    """
    logits = logits.float()
    log_top = logits.amax(dim=1) - torch.logsumexp(logits, dim=1)
    per_pixel = torch.relu(log_top - math.log(cap))
    return _masked_mean(per_pixel, counted)


def _masked_mean(per_pixel: torch.Tensor, counted: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_pixel`` over the ``counted`` pixels (all when None; 0 when none is)."""
    if counted is None:
        return per_pixel.mean()
    weights = counted.to(per_pixel.dtype)
    return (per_pixel * weights).sum() / weights.sum().clamp(min=1.0)


__all__ = [
    "OutlierExposure",
    "band_orders",
    "capped_confidence_loss",
    "no_outliers",
    "uniform_target_loss",
]
