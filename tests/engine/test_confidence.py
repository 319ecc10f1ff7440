"""The low-confidence check: a share far above the held-out range warns once; else quiet."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from geoseg.engine.confidence import check_low_confidence, share_below, warn_above
from geoseg.errors import LowConfidenceWarning

CARD = {"low_confidence": {"threshold": 0.5, "range": [0.02, 0.06]}}


def _counts(low: int, high: int) -> np.ndarray:
    counts = np.zeros(256, dtype=np.int64)
    counts[60] = low  # confidence 0.24
    counts[250] = high
    return counts


def test_share_below_the_threshold():
    assert share_below(_counts(1, 3)) == pytest.approx(0.25)
    assert share_below(np.stack([_counts(1, 3), _counts(3, 1)])) == pytest.approx(0.5)
    assert share_below(np.zeros(256, dtype=np.int64)) is None
    counts = np.zeros(256, dtype=np.int64)
    counts[127], counts[128] = 1, 1  # 127/255 < 0.5 <= 128/255
    assert share_below(counts) == pytest.approx(0.5)


def test_warn_above_gives_a_margin():
    assert warn_above(0.06) == pytest.approx(0.16)
    assert warn_above(0.3) == pytest.approx(0.6)
    assert warn_above(0.8) == 0.95


def test_a_scene_like_the_held_out_groups_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = check_low_confidence(_counts(8, 92), CARD, "scene.tif")
    assert not check.unusual
    assert check.to_dict() == {
        "low_confidence_share": 0.08,
        "low_confidence_threshold": 0.5,
        "low_confidence_seen": [0.02, 0.06],
        "low_confidence_warning": False,
    }


def test_an_unusual_scene_warns_once_and_is_recorded():
    with pytest.warns(LowConfidenceWarning, match=r"40% of scene.tif's pixels .* 2%-6%") as seen:
        check = check_low_confidence(_counts(40, 60), CARD, "scene.tif")
    assert len(seen) == 1 and check.unusual and check.to_dict()["low_confidence_warning"] is True


def test_an_uncalibrated_model_records_the_share_and_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = check_low_confidence(_counts(90, 10), {}, "scene.tif")
    assert check.share == pytest.approx(0.9) and check.limit is None and not check.unusual
