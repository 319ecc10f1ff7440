"""Metrics against confusion matrices and scores computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg.training import metrics

# 3 classes, 10 labelled pixels plus 2 ignored (255).
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 255, 255])
PREDS = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1, 0, 1])
# true\pred  0  1  2
#   0        2  1  1
#   1        1  2  0
#   2        0  1  2
EXPECTED_CM = np.array([[2, 1, 1], [1, 2, 0], [0, 1, 2]])


def test_confusion_matrix_counts_true_rows_and_skips_ignored() -> None:
    cm = metrics.confusion_matrix(LABELS, PREDS, 3)
    np.testing.assert_array_equal(cm, EXPECTED_CM)
    assert cm.sum() == 10


def test_confusion_matrix_without_ignore_index_still_drops_out_of_range_labels() -> None:
    cm = metrics.confusion_matrix(LABELS, PREDS, 3, ignore_index=None)
    np.testing.assert_array_equal(cm, EXPECTED_CM)


def test_custom_ignore_index_inside_class_range() -> None:
    cm = metrics.confusion_matrix(LABELS, PREDS, 3, ignore_index=2)
    np.testing.assert_array_equal(cm, [[2, 1, 1], [1, 2, 0], [0, 0, 0]])


def test_unpredicted_pixels_are_counted_not_scored() -> None:
    labels = np.array([0, 1, 1, 255])
    preds = np.array([0, 255, 1, 255])
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, preds, 2), [[1, 0], [0, 1]])
    assert metrics.unpredicted(labels, preds, 2) == 1


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="pixels"):
        metrics.confusion_matrix(np.zeros(3), np.zeros(4), 2)


def test_scores_match_hand_computation() -> None:
    cm = EXPECTED_CM
    assert metrics.pixel_accuracy(cm) == pytest.approx(6 / 10)
    np.testing.assert_allclose(metrics.class_accuracy(cm), [2 / 4, 2 / 3, 2 / 3])
    # IoU = TP / (row + col - TP): class 0: 2/(4+3-2), class 1: 2/(3+4-2), class 2: 2/(3+3-2)
    np.testing.assert_allclose(metrics.iou(cm), [2 / 5, 2 / 5, 2 / 4])
    # Dice = 2TP / (row + col)
    np.testing.assert_allclose(metrics.dice(cm), [4 / 7, 4 / 7, 4 / 6])


def test_absent_class_is_nan_and_left_out_of_means() -> None:
    cm = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    iou = metrics.iou(cm)
    assert iou[0] == pytest.approx(3 / 4) and iou[1] == pytest.approx(4 / 5)
    assert math.isnan(iou[2])
    summary = metrics.summarize(cm, ["a", "b", "c"])
    assert summary["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2, abs=1e-6)
    assert summary["per_class"]["c"]["iou"] is None
    assert summary["mean_class_accuracy"] == pytest.approx((3 / 4 + 1) / 2, abs=1e-6)


def test_class_predicted_but_never_labelled_has_zero_iou() -> None:
    cm = np.array([[3, 1], [0, 0]])
    np.testing.assert_allclose(metrics.iou(cm), [3 / 4, 0.0])
    assert math.isnan(metrics.class_accuracy(cm)[1])


def test_summarize_is_json_ready() -> None:
    import json

    summary = metrics.summarize(EXPECTED_CM, ["x", "y", "z"])
    text = json.dumps(summary)
    assert json.loads(text)["confusion_matrix"] == EXPECTED_CM.tolist()
    assert summary["miou"] == pytest.approx((0.4 + 0.4 + 0.5) / 3, abs=1e-6)
    assert summary["mean_dice"] == pytest.approx((4 / 7 + 4 / 7 + 4 / 6) / 3, abs=1e-6)
    assert summary["per_class"]["x"]["pixels"] == 4


def test_summarize_refuses_wrong_names_and_non_square() -> None:
    with pytest.raises(ValueError, match="names"):
        metrics.summarize(EXPECTED_CM, ["x", "y"])
    with pytest.raises(ValueError, match="square"):
        metrics.iou(np.zeros((2, 3), dtype=np.int64))


def test_empty_matrix_gives_undefined_accuracy() -> None:
    assert math.isnan(metrics.pixel_accuracy(np.zeros((2, 2), dtype=np.int64)))
