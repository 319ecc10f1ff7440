"""Evaluation plots: image, labels and prediction side by side, and the confusion matrix.

Matplotlib (with the non-interactive ``Agg`` backend) is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from geoseg.training.scores import format_metric
from geoseg.types import ClassTable

if TYPE_CHECKING:
    from geoseg.training.scores import EvaluationResult


def _colorize(label: npt.NDArray[np.uint8], classes: ClassTable) -> npt.NDArray[np.uint8]:
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in classes:
        lut[c.id] = c.color
    out: npt.NDArray[np.uint8] = lut[label]
    return out


def plot_comparison(
    image: str | Path,
    truth: npt.NDArray[np.uint8],
    predicted: npt.NDArray[np.uint8],
    classes: ClassTable,
    out_dir: Path,
    *,
    bands: Sequence[int] = (1, 2, 3),
) -> Path:
    """Save image | labels | prediction side by side as ``<image stem>_comparison.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from geoseg.io.write import read_stretched_rgb

    rgb, _ = read_stretched_rgb(image, list(bands), truth.shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    panels = [
        (rgb, "image"),
        (_colorize(truth, classes), "labels (black: ignored)"),
        (_colorize(predicted, classes), "prediction"),
    ]
    for ax, (data, title) in zip(axes, panels, strict=True):
        ax.imshow(data, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    handles = [Patch(color=c.hex, label=c.name) for c in classes]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    out = out_dir / f"{Path(image).stem}_comparison.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(evaluation: EvaluationResult, out_path: Path) -> Path:
    """Save the row-normalised confusion matrix (recall per true class) with pixel counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = evaluation.confusion.astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    names = evaluation.classes.names
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = 1.2 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), value in np.ndenumerate(norm):
        ax.text(
            c,
            r,
            f"{value:.2f}",
            ha="center",
            va="center",
            color="white" if value > 0.5 else "black",
            fontsize=9,
        )
    miou = evaluation.summary["miou"]
    ax.set_title(f"{evaluation.model_name}\nmIoU {format_metric(miou)}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_reliability(evaluations: Mapping[str, EvaluationResult], out_path: Path) -> Path:
    """Save the reliability diagram: accuracy against confidence (15 bins), one line per group.

    A calibrated model's points lie on the diagonal; the legend gives each group's ECE.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoseg.training.calibration import ECE_BINS, reliability_bins

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5.5), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    for name, evaluation in evaluations.items():
        hist = evaluation.confidence_histogram
        if hist is None:
            continue
        confidence, accuracy, _ = reliability_bins(hist, ECE_BINS)
        ece = (evaluation.calibration or {}).get("ece")
        ax.plot(confidence, accuracy, marker="o", ms=4, label=f"{name} (ECE {format_metric(ece)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (winning class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (15 bins)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
