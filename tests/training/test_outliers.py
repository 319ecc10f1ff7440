import pytest
import torch

from geoseg.errors import ConfigError
from geoseg.training.outliers import OutlierExposure, band_orders, uniform_target_loss


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
    every = OutlierExposure(probability=1.0).outliers(x, generator)
    assert every.shape == x.shape
    for crop, outlier in zip(x, every, strict=True):
        means = [float(outlier[b].mean()) for b in range(3)]
        own = [float(crop[b].mean()) for b in range(3)]
        assert sorted(means) == own and means != own  # same bands, another order
    some = OutlierExposure(probability=0.3).outliers(x, torch.Generator().manual_seed(1))
    assert 0 <= len(some) <= 6 and some.shape[1:] == x.shape[1:]
    assert len(OutlierExposure().outliers(x[:, :1])) == 0  # one band: no other order


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


def test_outlier_exposure_settings_are_checked() -> None:
    assert OutlierExposure.from_config({}).to_dict() == {"probability": 0.25, "weight": 0.5}
    with pytest.raises(ConfigError, match="probability must be in"):
        OutlierExposure(probability=1.5)
    with pytest.raises(ConfigError, match="weight must be > 0"):
        OutlierExposure.from_config({"weight": 0})
    with pytest.raises(ConfigError, match="must be a number"):
        OutlierExposure.from_config({"weight": "high"})
