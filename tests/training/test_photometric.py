"""Sensor jitter: every class changed alike, config validated, JPEG and band counts handled."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import ConfigError
from geoseg.training.data import LabelledImage
from geoseg.training.datasets import ClassBalancedCentres, RandomCropDataset, mosaic_peers
from geoseg.training.photometric import SensorJitter, jpeg_roundtrip


def _scene(rng: np.random.Generator, bands: int = 3) -> np.ndarray:
    return rng.integers(30, 220, size=(bands, 48, 48)).astype(np.float32)


def test_jitter_changes_the_crop_within_range_and_is_reproducible():
    rng = np.random.default_rng(0)
    image = _scene(rng)
    jitter = SensorJitter()
    a = jitter.apply(image, np.random.default_rng(5))
    b = jitter.apply(image, np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 255
    draws = [jitter.apply(image, np.random.default_rng(s)) for s in range(8)]
    changes = [np.abs(d - image).mean() for d in draws]
    assert min(changes) > 1.0  # every draw changes the crop (gain and gamma always apply)


def test_jitter_is_the_same_transform_for_every_class():
    # Two halves of one colour must stay one colour: the jitter knows nothing of labels.
    image = np.full((3, 16, 16), 120.0, dtype=np.float32)
    image[0] = 60.0
    quiet = SensorJitter(blur=(0, 0), sharpen=(0, 0), noise=(0, 0), jpeg=(0, 35))
    out = quiet.apply(image, np.random.default_rng(3))
    assert np.ptp(out.reshape(3, -1), axis=1).max() < 1e-3


def test_identity_settings_leave_the_crop_unchanged():
    image = _scene(np.random.default_rng(1))
    none = SensorJitter(
        gain=0, gamma=(1, 1), brightness=(1, 1), contrast=(1, 1), haze=0, saturation=(1, 1),
        hue=0, blur=(0, 0), sharpen=(0, 0), noise=(0, 0), jpeg=(0, 35),
    )  # fmt: skip
    np.testing.assert_allclose(none.apply(image, np.random.default_rng(0)), image, atol=1e-3)


def test_four_band_crops_skip_the_rgb_steps():
    image = _scene(np.random.default_rng(2), bands=4)
    out = SensorJitter(jpeg=(1.0, 35)).apply(image, np.random.default_rng(0))
    assert out.shape == (4, 48, 48)


def test_jpeg_roundtrip_is_close_but_lossy():
    image = _scene(np.random.default_rng(3))
    out = jpeg_roundtrip(image, 40)
    assert out.shape == image.shape
    assert 0 < np.abs(out - image).mean() < 60


def test_config_parses_subsets_and_rejects_nonsense():
    jitter = SensorJitter.from_config({"gain": 0.1, "gamma": [0.9, 1.1]})
    assert jitter.gain == 0.1 and jitter.gamma == (0.9, 1.1) and jitter.hue == SensorJitter().hue
    assert SensorJitter.from_config(True) == SensorJitter()
    assert SensorJitter.from_config({}).to_dict()["gamma"] == [0.75, 1.35]
    with pytest.raises(ConfigError, match="unknown training.photometric key"):
        SensorJitter.from_config({"gian": 0.1})
    with pytest.raises(ConfigError, match="two numbers"):
        SensorJitter.from_config({"gamma": 1.2})
    with pytest.raises(ConfigError, match="0 < low <= high"):
        SensorJitter.from_config({"brightness": [1.3, 0.7]})
    with pytest.raises(ConfigError, match="probability"):
        SensorJitter.from_config({"blur": [1.5, 1.0]})
    with pytest.raises(ConfigError, match="mapping"):
        SensorJitter.from_config([0.1])


def _labelled(name: str, label: np.ndarray, gsd: float | None = None) -> LabelledImage:
    image = np.zeros((3, *label.shape), dtype=np.uint8)
    return LabelledImage(name, "g", image, label, gsd)


def test_class_balanced_centres_draw_rare_classes_as_often_as_common_ones():
    label = np.zeros((100, 100), dtype=np.uint8)
    label[:2, :2] = 1  # 4 pixels of a rare class in 10,000
    label[50:, :] = 255  # ignored pixels are never a centre
    centres = ClassBalancedCentres([_labelled("a", label)])
    assert centres.codes == [0, 1]
    rng = np.random.default_rng(0)
    drawn = [centres.draw(rng) for _ in range(2000)]
    codes = np.array([label[r, c] for _, (r, c) in drawn])
    assert not np.any(codes == 255)
    assert 0.4 < (codes == 1).mean() < 0.6


def test_crop_sizes_cycle_per_batch_and_target_gsd_zooms_out():
    label = np.zeros((400, 400), dtype=np.uint8)
    label[:, 200:] = 1
    items = [_labelled("a", label, gsd=0.5)]
    dataset = RandomCropDataset(
        items, 64, 8, [0, 0, 0], [1, 1, 1], crop_sizes=[32, 64], batch_size=2,
        target_gsd=((2.0, 2.0), 1.0), class_balance=0.5,
    )  # fmt: skip
    sizes = [dataset[i]["mask"].shape[0] for i in range(6)]
    assert sizes == [32, 32, 64, 64, 32, 32]
    # at 2 m a 64 crop of a 0.5 m image reads a 256 window: it spans both classes far more often
    rng = np.random.default_rng(0)
    assert dataset._window(0, 64, rng) == 256
    shares = dataset.label_shares(2, crops=200)
    assert shares.sum() == pytest.approx(1.0) and 0.3 < shares[1] < 0.7


def _tiles(count: int, edge: int = 32, gsd: float = 0.5) -> list[LabelledImage]:
    """Small tiles of one size and pixel size, tile i labelled i all over."""
    return [_labelled(f"t{i}", np.full((edge, edge), i, np.uint8), gsd) for i in range(count)]


def test_mosaic_reads_small_tiles_at_a_pixel_size_far_beyond_their_own():
    tiles = _tiles(6)
    settings = dict(target_gsd=((4.0, 4.0), 1.0), sampling="images")
    alone = RandomCropDataset(tiles, 32, 8, [0, 0, 0], [1, 1, 1], **settings)
    laid = RandomCropDataset(tiles, 32, 8, [0, 0, 0], [1, 1, 1], mosaic=4, **settings)
    rng = np.random.default_rng(0)
    # 4 m asked of 32-px tiles at 0.5 m: alone capped at 1.25 tiles, laid 4 x 4 at 5 tiles
    assert alone._window(0, 32, rng) == 40 and laid._window(0, 32, rng) == 160
    for dataset, codes in ((alone, 1), (laid, 3)):
        seen = [set(np.unique(dataset[i]["mask"].numpy())) - {255} for i in range(8)]
        assert all(len(c) >= codes for c in seen) and (codes > 1 or all(len(c) == 1 for c in seen))
    # the patchwork holds the drawn tile whole at its offset, and only its peers around it
    image, label, (top, left) = laid._patchwork(2, rng)
    assert label.shape == (128, 128) and image.shape == (3, 128, 128)
    assert (label[top : top + 32, left : left + 32] == 2).all()
    assert set(np.unique(label)) <= set(range(6))


def test_mosaic_peers_share_shape_and_pixel_size_and_keep_class_balanced_centres():
    odd = _labelled("odd", np.full((48, 48), 7, np.uint8), 0.5)  # another size: no peer
    coarse = _tiles(2, gsd=1.0)  # another pixel size: each other's peers only
    peers = mosaic_peers([*_tiles(3), odd, *coarse])
    assert peers == {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2], 4: [4, 5], 5: [4, 5]}
    rare = _tiles(4)
    rare[3].label[:6, :6] = 9  # a rare code in one tile: its class-balanced centre
    dataset = RandomCropDataset(
        rare, 32, 8, [0, 0, 0], [1, 1, 1], mosaic=4, target_gsd=((1.5, 1.5), 1.0),
        class_balance=1.0,
    )  # fmt: skip
    assert dataset.balance is not None
    dataset.balance.draw = lambda rng: (3, (2, 2))  # type: ignore[method-assign]
    # a 96-px window in a 128-px patchwork: it holds the centre wherever tile 3 was laid
    assert all(9 in dataset[i]["mask"].numpy() for i in range(20))
