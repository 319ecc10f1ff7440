import pytest
import torch

from geoseg.errors import ConfigError
from geoseg.training.outliers import (
    OutlierExposure,
    band_orders,
    capped_confidence_loss,
    uniform_target_loss,
)


def test_band_orders_are_every_permutation_but_the_identity() -> None:
    orders = band_orders(3)
    assert len(orders) == 5 and (0, 1, 2) not in orders
    assert set(orders) | {(0, 1, 2)} == {
        (0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0),
    }  # fmt: skip
    assert band_orders(1) == []


def test_outliers_are_the_batch_crops_with_their_bands_reordered() -> None:
    x = torch.stack([torch.stack([torch.full((4, 4), 10.0 * i + b) for b in range(3)])
                     for i in range(6)])  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    every, counted = OutlierExposure(probability=1.0).outliers(x, generator)
    assert every.shape == x.shape and counted.shape == (6, 4, 4)
    assert bool(counted.all())  # bands 1 apart in normalised units: every pixel changed
    for crop, outlier in zip(x, every, strict=True):
        means = [float(outlier[b].mean()) for b in range(3)]
        own = [float(crop[b].mean()) for b in range(3)]
        assert sorted(means) == own and means != own  # same bands, another order
    some, _ = OutlierExposure(probability=0.3).outliers(x, torch.Generator().manual_seed(1))
    assert 0 <= len(some) <= 6 and some.shape[1:] == x.shape[1:]
    assert len(OutlierExposure().outliers(x[:, :1])[0]) == 0  # one band: no other order


def test_grey_pixels_do_not_count_as_outliers() -> None:
    # A grey pixel reads the same in any band order: asking for uniform there would contradict
    # its label, so only the coloured half of the crop counts.
    x = torch.zeros(1, 3, 2, 4)
    x[0, :, :, :2] = 0.5  # grey
    x[0, 0, :, 2:], x[0, 1, :, 2:], x[0, 2, :, 2:] = 0.9, 0.1, -0.6  # coloured
    crops, counted = OutlierExposure(probability=1.0).outliers(x)
    assert torch.equal(crops[0, :, :, :2], x[0, :, :, :2])
    assert counted[0].tolist() == [[False, False, True, True]] * 2
    _, every = OutlierExposure(probability=1.0, min_change=0).outliers(x)
    assert bool(every.all())


def test_uniform_target_loss_is_zero_on_uniform_and_pulls_towards_it() -> None:
    flat = torch.zeros(2, 6, 3, 3)
    assert float(uniform_target_loss(flat)) == pytest.approx(0.0, abs=1e-6)
    peaked = flat.clone()
    peaked[:, 2] = 8.0
    logits = peaked.clone().requires_grad_(True)
    loss = uniform_target_loss(logits)
    assert float(loss) > 1.0
    loss.backward()
    assert logits.grad is not None
    assert bool((logits.grad[:, 2] > 0).all())  # a step down the gradient lowers the peak
    counted = torch.zeros(2, 3, 3, dtype=torch.bool)
    half = peaked.clone()
    half[:, 2, 0] = 0.0  # row 0 uniform, rows 1-2 peaked
    counted[:, 0] = True
    assert float(uniform_target_loss(half, counted)) == pytest.approx(0.0, abs=1e-6)
    counted[:, 1] = True
    assert float(uniform_target_loss(half, counted)) == pytest.approx(float(loss) / 2, rel=1e-5)
    assert float(uniform_target_loss(half, torch.zeros_like(counted))) == 0.0


def test_outlier_exposure_settings_are_checked() -> None:
    assert OutlierExposure.from_config({}).to_dict() == {
        "probability": 0.25, "weight": 0.5, "min_change": 0.1,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="min_change must be >= 0"):
        OutlierExposure(min_change=-0.1)
    with pytest.raises(ConfigError, match="probability must be in"):
        OutlierExposure(probability=1.5)
    with pytest.raises(ConfigError, match="weight must be > 0"):
        OutlierExposure.from_config({"weight": 0})
    with pytest.raises(ConfigError, match="must be a number"):
        OutlierExposure.from_config({"weight": "high"})


def test_capped_confidence_loss_only_pushes_the_top_class_above_the_cap() -> None:
    logits = torch.zeros(1, 6, 1, 2)
    logits[0, 2, 0, 1] = 8.0  # pixel 0 uniform (1/6 each), pixel 1 sure of class 2
    loss = capped_confidence_loss(logits, 0.4)
    top = torch.softmax(logits[0, :, 0, 1], dim=0).max()
    assert float(loss) == pytest.approx(float(torch.log(top / 0.4)) / 2, rel=1e-5)
    below = torch.zeros(1, 6, 1, 1)
    below[0, 0] = 0.5  # top probability about 0.25 < 0.4: nothing to pay
    assert float(capped_confidence_loss(below, 0.4)) == 0.0
    exposure = OutlierExposure(max_confidence=0.4)
    counted = torch.tensor([[[True, False]]])
    assert float(exposure.loss(logits, counted)) == 0.0  # only the uniform pixel counts
    assert exposure.to_dict()["max_confidence"] == 0.4
    with pytest.raises(ConfigError, match="max_confidence must be a number in"):
        OutlierExposure.from_config({"max_confidence": 1.0})
