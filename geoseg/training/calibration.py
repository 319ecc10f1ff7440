"""Confidence that means what it says: temperature scaling, calibration error, uncertain shares.

A network trained with cross-entropy is often over-confident on images unlike its training ones.
:func:`fit_temperature` finds the one temperature ``T`` (logits divided by ``T``) that minimises
the negative log-likelihood on the held-out groups, each group weighted alike; export folds it
into the network's last convolution, so ``confidence.tif`` and ``probabilities.tif`` carry it on
every path (torch, ONNX, dask) with no extra step.

Calibration is then measured from 8-bit confidences (what ``confidence.tif`` stores) as a
:data:`ConfidenceHistogram`: counts of wrong and right pixels per confidence value 0..255, which
sum over images and groups, and give the expected calibration error (ECE, 15 equal-width bins),
the median confidence of right and wrong pixels, and the share of pixels under a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from geoseg.engine.confidence import LOW_CONFIDENCE, share_below
from geoseg.engine.inference import TTA_TRANSFORMS, tta_forward, tta_inverse
from geoseg.model import SegmentationModel
from geoseg.training.label_sets import IGNORE_INDEX, LabelSets

#: ``(2, 256)`` int64: row 0 counts wrong pixels, row 1 right ones, by confidence x 255.
ConfidenceHistogram = npt.NDArray[np.int64]
ECE_BINS = 15


def confidence_histogram(
    confidence: npt.NDArray[np.uint8], correct: npt.NDArray[np.bool_], valid: npt.NDArray[np.bool_]
) -> ConfidenceHistogram:
    """Wrong and right pixel counts per confidence value (``confidence`` = probability x 255)."""
    conf = confidence[valid].astype(np.int64)
    right = correct[valid]
    hist = np.zeros((2, 256), dtype=np.int64)
    hist[0] = np.bincount(conf[~right], minlength=256)[:256]
    hist[1] = np.bincount(conf[right], minlength=256)[:256]
    return hist


def reliability_bins(
    hist: ConfidenceHistogram, bins: int = ECE_BINS
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Mean confidence, accuracy and pixel count of each non-empty bin of ``bins`` equal ones."""
    values = np.arange(256) / 255.0
    index = np.minimum((values * bins).astype(int), bins - 1)
    counts = np.bincount(index, weights=hist.sum(axis=0), minlength=bins)
    right = np.bincount(index, weights=hist[1], minlength=bins)
    conf = np.bincount(index, weights=hist.sum(axis=0) * values, minlength=bins)
    kept = counts > 0
    n = counts[kept]
    return conf[kept] / n, right[kept] / n, n.astype(np.int64)


def expected_calibration_error(hist: ConfidenceHistogram, bins: int = ECE_BINS) -> float | None:
    """ECE: the pixel-weighted mean gap between accuracy and mean confidence over ``bins`` bins."""
    total = int(hist.sum())
    if total == 0:
        return None
    confidence, accuracy, n = reliability_bins(hist, bins)
    return float((n * np.abs(accuracy - confidence)).sum() / total)


def median_confidence(counts: npt.NDArray[np.int64]) -> float | None:
    """The median of confidences counted per value 0..255 (``None`` with no pixel)."""
    total = int(counts.sum())
    if total == 0:
        return None
    return float(np.searchsorted(np.cumsum(counts), (total + 1) / 2) / 255.0)


def calibration_summary(hist: ConfidenceHistogram) -> dict[str, Any]:
    """ECE, median confidence of right and wrong pixels, and the low-confidence share."""
    right, wrong = median_confidence(hist[1]), median_confidence(hist[0])
    return {
        "ece": _r(expected_calibration_error(hist)),
        "median_confidence_right": _r(right),
        "median_confidence_wrong": _r(wrong),
        "low_confidence_share": _r(share_below(hist)),
        "pixels": int(hist.sum()),
    }


@dataclass(frozen=True)
class HeldOutLogits:
    """Logits of sampled labelled pixels of one held-out group: ``(views, n, K)`` and codes."""

    group: str
    logits: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]


def sample_logits(
    model: SegmentationModel,
    items: Sequence[Any],
    *,
    tta: str = "none",
    pixels_per_group: int = 200_000,
    seed: int = 0,
) -> list[HeldOutLogits]:
    """Logits of up to ``pixels_per_group`` labelled pixels per group, one set per TTA view.

    ``items`` are :class:`~geoseg.training.data.LabelledImage`; each whole image is normalised
    and padded as :class:`~geoseg.training.datasets.WholeImageDataset` does.
    """
    from geoseg.training.datasets import WholeImageDataset

    card = model.card
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[Any]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item)
    module = model.module.eval()
    out = []
    for group, members in sorted(by_group.items()):
        labelled = sum(int((m.label != IGNORE_INDEX).sum()) for m in members)
        keep = min(1.0, pixels_per_group / max(labelled, 1))
        dataset = WholeImageDataset(members, card.mean, card.std, stride=card.output_stride)
        logits, labels = [], []
        for i in range(len(dataset)):
            sample = dataset[i]
            mask = sample["mask"].numpy()
            flat = np.flatnonzero((mask != IGNORE_INDEX).ravel())
            chosen = flat[rng.random(len(flat)) < keep]
            views = _view_logits(module, sample["image"][None], tta)
            logits.append(views.reshape(views.shape[0], views.shape[1], -1)[:, :, chosen])
            labels.append(mask.ravel()[chosen].astype(np.uint8))
        stacked = np.concatenate(logits, axis=2).transpose(0, 2, 1)
        out.append(HeldOutLogits(group, np.ascontiguousarray(stacked), np.concatenate(labels)))
    return out


@torch.inference_mode()
def _view_logits(module: torch.nn.Module, x: torch.Tensor, tta: str) -> npt.NDArray[np.float32]:
    """``(views, K, H, W)`` logits of one image, each TTA view transformed back."""
    views = [
        tta_inverse(module(tta_forward(x, turns, mirror)).float(), turns, mirror)[0]
        for turns, mirror in TTA_TRANSFORMS[tta]
    ]
    return torch.stack(views).numpy()


def set_probabilities(
    logits: npt.NDArray[np.float32], temperature: float, sets: LabelSets
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """View-averaged probabilities ``(n, K)`` at ``temperature`` and the membership ``(n, codes)``.

    ``logits`` are ``(views, n, K)``; the probabilities of every view are averaged, as
    :class:`~geoseg.engine.inference.Predictor` does.
    """
    z = torch.from_numpy(logits) / temperature
    probs = torch.softmax(z, dim=2).mean(dim=0).numpy()
    return probs, sets.membership().astype(np.float32)


def group_nll(held: HeldOutLogits, temperature: float, sets: LabelSets) -> float:
    """Mean negative log-likelihood of the labels (a set label: its classes' summed probability)."""
    probs, membership = set_probabilities(held.logits, temperature, sets)
    p_label = (probs * membership[held.labels.astype(np.int64)]).sum(axis=1)
    return float(-np.log(np.clip(p_label, 1e-12, None)).mean())


def fit_temperature(
    held_out: Sequence[HeldOutLogits], sets: LabelSets, *, low: float = 0.25, high: float = 8.0
) -> float:
    """The temperature that minimises the mean over groups of each group's NLL.

    A log-spaced grid, then a golden-section search around its best point: the NLL is smooth
    and unimodal in ``log T``, and one scalar needs no optimiser state.
    """

    def objective(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean([group_nll(h, t, sets) for h in held_out]))

    grid = np.linspace(math.log(low), math.log(high), 25)
    best = int(np.argmin([objective(g) for g in grid]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(20):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if objective(c) < objective(d):
            b = d
        else:
            a = c
    return round(math.exp((a + b) / 2), 4)


def logits_histogram(
    held: HeldOutLogits, temperature: float, sets: LabelSets
) -> ConfidenceHistogram:
    """The :data:`ConfidenceHistogram` of one group's sampled pixels at ``temperature``."""
    probs, membership = set_probabilities(held.logits, temperature, sets)
    pred = probs.argmax(axis=1)
    correct = membership[held.labels.astype(np.int64), pred] > 0
    confidence = np.rint(probs.max(axis=1) * 255).astype(np.uint8)
    return confidence_histogram(confidence, correct, np.ones_like(correct))


def calibration_card(
    temperature: float,
    before: Mapping[str, ConfidenceHistogram],
    after: Mapping[str, ConfidenceHistogram],
) -> dict[str, Any]:
    """The card's ``calibration``: temperature, per-group ECE before and after, uncertain range.

    The range of the groups' low-confidence shares is what a run compares its scene with
    (:func:`geoseg.engine.confidence.check_low_confidence`).
    """
    groups = {
        g: {"ece_before": calibration_summary(before[g])["ece"], **calibration_summary(after[g])}
        for g in sorted(after)
    }
    shares = [s["low_confidence_share"] for s in groups.values() if s["low_confidence_share"]]
    return {
        "temperature": temperature,
        "method": "temperature scaling, NLL on the held-out groups (each group alike)",
        "groups": groups,
        "low_confidence": {
            "threshold": LOW_CONFIDENCE,
            "range": [min(shares), max(shares)] if shares else None,
        },
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
