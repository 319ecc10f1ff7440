"""Tests for geoseg.training.export: the card's held-out scores use the card's default TTA."""

from __future__ import annotations

import dataclasses

import numpy as np

from geoseg.engine.inference import Predictor
from geoseg.model import SegmentationModel
from geoseg.training import metrics as seg_metrics
from geoseg.training.data import LabelledImage
from geoseg.training.export import held_out_metrics, score_whole_images
from tests.conftest import TIE_MARGIN, conv_model, top_two_margin


def _items() -> list[LabelledImage]:
    rng = np.random.default_rng(3)
    return [
        LabelledImage(
            name=f"image_{i}",
            group="val",
            image=rng.integers(0, 256, (3, 40, 50), dtype=np.uint8),
            label=rng.integers(0, 4, (40, 50), dtype=np.uint8),
        )
        for i in range(2)
    ]


def _with_tta(model: SegmentationModel, tta: str | None) -> SegmentationModel:
    return SegmentationModel(model.module, dataclasses.replace(model.card, tta=tta))


def test_whole_image_scores_follow_the_cards_tta() -> None:
    model = conv_model(num_classes=4, seed=1)
    items = _items()
    plain = score_whole_images(_with_tta(model, None), items)
    mirrored = score_whole_images(_with_tta(model, "mirror"), items)
    # the reference: what geoseg run's predictor gives with --tta mirror on each whole image
    predictor = Predictor(model, device="cpu", tta="mirror")
    mean = np.asarray(model.card.mean, np.float32)[:, None, None]
    std = np.asarray(model.card.std, np.float32)[:, None, None]
    expected = np.zeros((4, 4), np.int64)
    ties = 0
    for item in items:
        x = ((item.image.astype(np.float32) - mean) / std)[None]
        probs = predictor.predict(x)[0]
        pred = probs.argmax(axis=0).astype(np.uint8)
        expected += seg_metrics.confusion_matrix(item.label, pred, 4)
        ties += int((top_two_margin(probs) < TIE_MARGIN).sum())
    # equal but for pixels at a floating-point tie (another order of the same sums)
    assert np.abs(mirrored - expected).sum() <= 2 * ties
    assert plain.sum() == mirrored.sum() == 2 * 40 * 50
    assert not np.array_equal(plain, mirrored)  # the net is not mirror-symmetric


def test_card_metrics_name_the_tta_they_were_scored_with() -> None:
    model = conv_model(num_classes=4, seed=1)
    assert held_out_metrics(_with_tta(model, None), _items())["tta"] == "none"
    scored = held_out_metrics(_with_tta(model, "flips"), _items())
    assert scored["tta"] == "flips" and 0.0 <= scored["miou"] <= 1.0
