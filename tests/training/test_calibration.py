"""Calibration: histograms, ECE, a fitted temperature that undoes over-confidence, the card."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.training.calibration import (
    HeldOutLogits,
    calibration_card,
    confidence_histogram,
    expected_calibration_error,
    fit_temperature,
    logits_histogram,
    median_confidence,
    reliability_bins,
)
from geoseg.training.label_sets import LabelSets


def test_histogram_counts_right_and_wrong_by_confidence():
    confidence = np.array([[255, 128], [128, 0]], dtype=np.uint8)
    correct = np.array([[True, False], [True, True]])
    valid = np.array([[True, True], [True, False]])
    hist = confidence_histogram(confidence, correct, valid)
    assert hist.shape == (2, 256) and hist.sum() == 3
    assert hist[1, 255] == 1 and hist[1, 128] == 1 and hist[0, 128] == 1 and hist[1, 0] == 0


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    hist = np.zeros((2, 256), dtype=np.int64)
    hist[1, 255] = 100  # all certain and right
    assert expected_calibration_error(hist) == pytest.approx(0.0)
    hist[0, 255] = 100  # now half of the certain pixels are wrong
    assert expected_calibration_error(hist) == pytest.approx(0.5)
    assert expected_calibration_error(np.zeros((2, 256), dtype=np.int64)) is None
    conf, acc, n = reliability_bins(hist)
    assert n.tolist() == [200] and acc[0] == pytest.approx(0.5) and conf[0] == pytest.approx(1.0)


def test_median_confidence():
    counts = np.zeros(256, dtype=np.int64)
    counts[[51, 102, 204]] = 1
    assert median_confidence(counts) == pytest.approx(102 / 255)
    assert median_confidence(np.zeros(256, dtype=np.int64)) is None


def _overconfident(rng: np.random.Generator, n: int, scale: float) -> HeldOutLogits:
    """Logits from a true 3-class model at temperature 1, multiplied by ``scale``."""
    labels = rng.integers(0, 3, size=n)
    true_logits = rng.normal(0, 1.0, size=(n, 3))
    true_logits[np.arange(n), labels] += 1.0
    # labels drawn from the true probabilities, so temperature 1 is calibrated
    p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    drawn = np.array([rng.choice(3, p=row) for row in p])
    logits = (scale * true_logits)[None].astype(np.float32)
    return HeldOutLogits("g", logits, drawn.astype(np.uint8))


def test_fit_temperature_recovers_the_over_confidence_and_lowers_the_ece():
    rng = np.random.default_rng(0)
    sets = LabelSets(3)
    held = [_overconfident(rng, 4000, 3.0), _overconfident(rng, 4000, 3.0)]
    t = fit_temperature(held, sets)
    assert 2.5 < t < 3.5
    before = {"a": logits_histogram(held[0], 1.0, sets), "b": logits_histogram(held[1], 1.0, sets)}
    after = {"a": logits_histogram(held[0], t, sets), "b": logits_histogram(held[1], t, sets)}
    card = calibration_card(t, before, after)
    for group in ("a", "b"):
        g = card["groups"][group]
        assert g["ece"] < 0.03 < g["ece_before"]
        assert g["median_confidence_wrong"] < g["median_confidence_right"]
    low, high = card["low_confidence"]["range"]
    assert card["low_confidence"]["threshold"] == 0.5 and 0 < low <= high < 1
    assert card["temperature"] == t


def test_a_set_label_counts_its_members_probability():
    # the label "vegetation" (code 3 = classes 1 or 2): predicting either member is right
    sets = LabelSets(3, ((1, 2),))
    logits = np.array([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]]], dtype=np.float32)
    held = HeldOutLogits("g", logits, np.array([3, 3, 3], dtype=np.uint8))
    hist = logits_histogram(held, 1.0, sets)
    assert hist[1].sum() == 2 and hist[0].sum() == 1
