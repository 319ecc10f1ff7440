"""What an evaluation yields: per-image confusion matrices pooled into metrics, as JSON or a table.

:func:`geoseg.training.evaluate.evaluate` builds an :class:`EvaluationResult`; metrics come from
:func:`geoseg.training.metrics.summarize`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoseg.training import metrics as seg_metrics
from geoseg.training.label_sets import merge_confusion
from geoseg.types import ClassTable


@dataclass(frozen=True)
class ImageScore:
    """One image's confusion matrix and run time."""

    image: str
    labels: str
    confusion: npt.NDArray[np.int64]
    megapixels: float
    seconds: float
    unpredicted: int = 0
    # Wrong/right pixel counts per confidence value (geoseg.training.calibration); None: not read.
    confidence: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics over all evaluated images (pixels pooled), with per-image scores."""

    classes: ClassTable
    confusion: npt.NDArray[np.int64]
    images: tuple[ImageScore, ...]
    model_name: str
    plots: tuple[Path, ...] = field(default_factory=tuple)
    # Coarser classes also scored: {coarse name: [legend classes]} (e.g. tree + low vegetation).
    merge: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """:func:`geoseg.training.metrics.summarize` of the pooled confusion matrix."""
        return seg_metrics.summarize(self.confusion, self.classes.names)

    @property
    def coarse_summary(self) -> dict[str, Any] | None:
        """The same metrics on the merged classes (``None`` without ``merge``)."""
        if not self.merge:
            return None
        cm, names = merge_confusion(self.confusion, self.classes.names, self.merge)
        return seg_metrics.summarize(cm, names)

    @property
    def confidence_histogram(self) -> npt.NDArray[np.int64] | None:
        """The images' confidence histograms summed (``None`` when none was read)."""
        hists = [s.confidence for s in self.images if s.confidence is not None]
        return np.sum(hists, axis=0) if hists else None

    @property
    def calibration(self) -> dict[str, Any] | None:
        """ECE (15 bins), median confidence of right and wrong pixels, low-confidence share."""
        from geoseg.training.calibration import calibration_summary

        hist = self.confidence_histogram
        return calibration_summary(hist) if hist is not None else None

    @property
    def megapixels_per_second(self) -> float:
        """Throughput of the whole pipeline over all images."""
        seconds = sum(s.seconds for s in self.images)
        return sum(s.megapixels for s in self.images) / seconds if seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        per_image = []
        for score in self.images:
            s = seg_metrics.summarize(score.confusion, self.classes.names)
            per_image.append(
                {
                    "image": score.image,
                    "labels": score.labels,
                    "miou": s["miou"],
                    "pixel_accuracy": s["pixel_accuracy"],
                    "unpredicted_pixels": score.unpredicted,
                    "megapixels": round(score.megapixels, 4),
                    "seconds": round(score.seconds, 3),
                }
            )
        coarse = self.coarse_summary
        return {
            "model": self.model_name,
            "classes": self.classes.names,
            **self.summary,
            "coarse": {"merge": {k: list(v) for k, v in self.merge.items()}, **coarse}
            if coarse
            else None,
            "calibration": self.calibration,
            "megapixels_per_second": round(self.megapixels_per_second, 4),
            "images": per_image,
            "plots": [str(p) for p in self.plots],
        }

    def table(self) -> str:
        """A text table of per-class and overall metrics (and of the merged classes)."""
        lines = _summary_table(self.summary)
        coarse = self.coarse_summary
        if coarse is not None:
            merged = "; ".join(f"{k} = {' + '.join(v)}" for k, v in self.merge.items())
            lines += ["", f"coarse classes ({merged}):", *_summary_table(coarse)]
        cal = self.calibration
        if cal is not None:
            lines.append(
                f"calibration: ECE {format_metric(cal['ece'])} (15 bins); median confidence "
                f"{format_metric(cal['median_confidence_right'])} right, "
                f"{format_metric(cal['median_confidence_wrong'])} wrong; "
                f"{format_metric(cal['low_confidence_share'])} of pixels under 0.5"
            )
        lines.append(
            f"images {len(self.images)}, {sum(i.megapixels for i in self.images):.2f} Mpx, "
            f"{self.megapixels_per_second:.2f} Mpx/s through the pipeline"
        )
        return "\n".join(lines)


def _summary_table(s: Mapping[str, Any]) -> list[str]:
    lines = [f"{'class':<16}{'IoU':>8}{'Dice':>8}{'recall':>8}{'pixels':>12}"]
    for name, v in s["per_class"].items():
        lines.append(
            f"{name:<16}{_cell(v['iou'])}{_cell(v['dice'])}{_cell(v['accuracy'])}{v['pixels']:>12d}"
        )
    lines += [
        f"mean IoU             {_cell(s['miou']).strip()}",
        f"mean Dice            {_cell(s['mean_dice']).strip()}",
        f"pixel accuracy       {_cell(s['pixel_accuracy']).strip()}",
        f"mean class accuracy  {_cell(s['mean_class_accuracy']).strip()}",
    ]
    return lines


def _cell(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.4f}"


def format_metric(value: float | None) -> str:
    """A metric with four decimals, ``-`` where it is undefined (a class with no pixels)."""
    return "-" if value is None else f"{value:.4f}"
