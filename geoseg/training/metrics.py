"""Segmentation metrics from a confusion matrix: pure numpy, shared by training and evaluation.

The confusion matrix ``cm`` is ``(K, K)`` with ``cm[true, predicted]`` pixel counts. Classes that
appear neither in the labels nor in the predictions have an undefined IoU/Dice (NaN) and are left
out of the means, as in torchmetrics and mmseg.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def confusion_matrix(
    labels: npt.ArrayLike,
    predictions: npt.ArrayLike,
    num_classes: int,
    *,
    ignore_index: int | None = 255,
) -> npt.NDArray[np.int64]:
    """``(K, K)`` counts of ``cm[true, predicted]`` over pixels with a valid label and prediction.

    Pixels labelled ``ignore_index`` (or any value outside ``0..K-1``) are skipped, and so are
    pixels predicted outside ``0..K-1`` (e.g. nodata 255 where the input had no data): count
    those with :func:`unpredicted` so they are reported rather than silently dropped.
    """
    y, p = _flat_pair(labels, predictions)
    valid = _labelled(y, num_classes, ignore_index) & (p >= 0) & (p < num_classes)
    cm = np.bincount(y[valid] * num_classes + p[valid], minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def unpredicted(
    labels: npt.ArrayLike,
    predictions: npt.ArrayLike,
    num_classes: int,
    *,
    ignore_index: int | None = 255,
) -> int:
    """Number of labelled pixels whose prediction is not a class (left out of the matrix)."""
    y, p = _flat_pair(labels, predictions)
    return int((_labelled(y, num_classes, ignore_index) & ((p < 0) | (p >= num_classes))).sum())


def _flat_pair(
    labels: npt.ArrayLike, predictions: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(predictions).astype(np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels have {y.size} pixels but predictions {p.size}")
    return y, p


def _labelled(
    y: npt.NDArray[np.int64], num_classes: int, ignore_index: int | None
) -> npt.NDArray[np.bool_]:
    valid = (y >= 0) & (y < num_classes)
    if ignore_index is not None:
        valid &= y != ignore_index
    return valid


def _square(cm: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The matrix as floats and its row totals (pixels per true class)."""
    square = np.asarray(cm, dtype=np.float64)
    if square.ndim != 2 or square.shape[0] != square.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {square.shape}")
    return square, square.sum(axis=1)


def pixel_accuracy(cm: npt.NDArray[np.int64]) -> float:
    """Share of labelled pixels predicted correctly."""
    square, rows = _square(cm)
    total = rows.sum()
    return float(np.trace(square) / total) if total else float("nan")


def class_accuracy(cm: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Per-class recall ``TP / (TP + FN)``; NaN for classes absent from the labels."""
    square, rows = _square(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: npt.NDArray[np.float64] = np.diag(square) / rows
    return out


def iou(cm: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Per-class intersection over union ``TP / (TP + FP + FN)``; NaN where the union is empty."""
    square, rows = _square(cm)
    tp = np.diag(square)
    union = rows + square.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        out: npt.NDArray[np.float64] = np.where(union > 0, tp / union, np.nan)
    return out


def dice(cm: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Per-class Dice / F1 ``2 TP / (2 TP + FP + FN)``; NaN where the class is nowhere."""
    square, rows = _square(cm)
    tp = np.diag(square)
    denom = rows + square.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: npt.NDArray[np.float64] = np.where(denom > 0, 2 * tp / denom, np.nan)
    return out


def _nanmean(values: npt.NDArray[np.float64]) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summarize(cm: npt.NDArray[np.int64], class_names: list[str]) -> dict[str, Any]:
    """All metrics as plain data (for JSON, the model card and printing).

    Keys: ``pixel_accuracy``, ``mean_class_accuracy``, ``miou``, ``mean_dice``, ``per_class``
    (name -> {iou, dice, accuracy, pixels}) and ``confusion_matrix`` (K x K list, true rows).
    """
    k = len(class_names)
    if cm.shape[0] != k:
        raise ValueError(f"confusion matrix is for {cm.shape[0]} classes, {k} names given")
    per_iou, per_dice, per_acc = iou(cm), dice(cm), class_accuracy(cm)
    rows = cm.sum(axis=1)
    per_class = {
        name: {
            "iou": _num(per_iou[i]),
            "dice": _num(per_dice[i]),
            "accuracy": _num(per_acc[i]),
            "pixels": int(rows[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "pixel_accuracy": _num(pixel_accuracy(cm)),
        "mean_class_accuracy": _num(_nanmean(per_acc)),
        "miou": _num(_nanmean(per_iou)),
        "mean_dice": _num(_nanmean(per_dice)),
        "per_class": per_class,
        "confusion_matrix": np.asarray(cm).astype(int).tolist(),
    }


def _num(value: float) -> float | None:
    """JSON has no NaN: undefined metrics become ``None``."""
    return None if np.isnan(value) else round(float(value), 6)
