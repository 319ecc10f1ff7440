"""Does a run's map deserve trust? Its share of low-confidence pixels against the model's norm.

A model card's ``calibration.low_confidence`` keeps the threshold and the range of the share of
pixels below it that the held-out groups showed (see :mod:`geoseg.training.calibration`). A scene
whose share lies far above that range is unlike the images the model was checked on (another
sensor, the wrong bands, a pixel size it never saw): :func:`check_low_confidence` says so in one
warning, and the run records the share in ``run.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import LowConfidenceWarning, warn

#: The confidence under which a pixel counts as uncertain when a card names none.
LOW_CONFIDENCE = 0.5


def warn_above(seen_max: float) -> float:
    """The share that counts as *far above* a held-out maximum of ``seen_max``.

    Twice the worst held-out group's share, and at least 10 points above it: a quiet margin for
    validation-like scenes, yet well below what a scene the model cannot read gives.
    """
    return min(max(2.0 * seen_max, seen_max + 0.10), 0.95)


def share_below(counts: npt.NDArray[np.int64], threshold: float = LOW_CONFIDENCE) -> float | None:
    """Share of pixels under ``threshold``; ``counts`` of confidence x 255, per value 0..255.

    ``counts`` may be ``(256,)`` or ``(rows, 256)`` (summed over rows); ``None`` with no pixel.
    """
    flat = counts.sum(axis=0) if counts.ndim == 2 else counts
    total = int(flat.sum())
    if total == 0:
        return None
    return float(flat[: math.ceil(threshold * 255)].sum() / total)


@dataclass(frozen=True)
class ConfidenceCheck:
    """A run's low-confidence share, the range its model's held-out groups showed, the verdict."""

    share: float | None
    threshold: float
    seen: tuple[float, float] | None
    limit: float | None

    @property
    def unusual(self) -> bool:
        """True when the share is far above what the held-out groups showed."""
        return self.share is not None and self.limit is not None and self.share > self.limit

    def to_dict(self) -> dict[str, Any]:
        """What ``run.json`` records."""
        return {
            "low_confidence_share": None if self.share is None else round(self.share, 4),
            "low_confidence_threshold": self.threshold,
            "low_confidence_seen": list(self.seen) if self.seen else None,
            "low_confidence_warning": self.unusual,
        }


def check_low_confidence(
    counts: npt.NDArray[np.int64], calibration: Mapping[str, Any], scene: str
) -> ConfidenceCheck:
    """The run's :class:`ConfidenceCheck`, warning once when the scene looks unlike the model's.

    A model whose card keeps no range (not calibrated) gets the share recorded, never a warning.
    """
    low = calibration.get("low_confidence") or {}
    threshold = float(low.get("threshold", LOW_CONFIDENCE))
    seen = tuple(float(v) for v in low["range"]) if low.get("range") else None
    limit = warn_above(seen[1]) if seen else None
    check = ConfidenceCheck(share_below(counts, threshold), threshold, seen, limit)  # type: ignore[arg-type]
    if check.unusual:
        assert check.share is not None and seen is not None
        warn(
            f"{check.share:.0%} of {scene}'s pixels have a confidence under {threshold:g}, "
            f"against {seen[0]:.0%}-{seen[1]:.0%} on the model's held-out images: the scene is "
            "unlike what the model was trained on (other bands, sensor or pixel size?); check "
            "--bands and --resolution, and read the map with care",
            LowConfidenceWarning,
            stacklevel=2,
        )
    return check
