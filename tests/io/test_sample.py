"""What ``--scale`` reads of a scene (geoseg.io.sample): metadata and a sample, never the whole."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from geoseg.errors import ScaleError
from geoseg.io import sample as samplemod
from geoseg.io.read import scene_info
from geoseg.io.sample import band_facts, sample_dataset, sample_windows, scene_stretch
from geoseg.types import ModelInput, PixelWindow, ScaleSpec
from tests.conftest import write_raster

UINT8 = ModelInput("uint8", (0.0, 255.0), (0.0, 114.75), (140.25, 255.0))


@pytest.fixture
def small_limits(monkeypatch):
    """Sampling limits scaled down so that tiny rasters take the paths of large scenes."""
    for name, value in [("SAMPLE_PIXELS", 32 * 32), ("OVERVIEW_MIN_PIXELS", 32 * 32),
                        ("WINDOWS_PER_SIDE", 4), ("WINDOW", 8), ("MIN_VALID", 32),
                        ("DENSE_PER_SIDE", 16), ("DENSE_WINDOW", 4)]:  # fmt: skip
        monkeypatch.setattr(samplemod, name, value)


def numbered(count: int, height: int, width: int) -> np.ndarray:
    """(C, H, W) uint16 where every pixel of a band has its own value (1 + row * width + col)."""
    pixel = 1 + np.arange(height * width, dtype=np.uint16).reshape(height, width)
    return np.stack([pixel + 0 * b for b in range(count)])


def test_sample_windows_cover_a_small_scene_whole_and_spread_over_a_large_one():
    assert sample_windows(1000, 1000) == [PixelWindow(0, 0, 1000, 1000)]
    windows = sample_windows(5000, 3000)
    assert len(windows) == 16 and all(w.shape == (256, 256) for w in windows)
    assert all(0 <= w.row_off and w.row_end <= 5000 and w.col_end <= 3000 for w in windows)
    rows = sorted({w.row_off for w in windows})
    assert rows[0] < 5000 / 4 < rows[1] and rows[-1] > 3 * 5000 / 4 - 256  # one per grid cell
    narrow = sample_windows(40_000, 100)  # windows clipped to the scene, duplicates merged
    assert all(w.width == 100 and w.col_off == 0 for w in narrow) and len(narrow) == 4


def test_a_small_scene_is_sampled_whole(tmp_path):
    data = numbered(3, 20, 30)
    path = write_raster(tmp_path / "s.tif", data)
    with rasterio.open(path) as ds:
        sample = sample_dataset(ds, [1, 2, 3])
    assert sample.where == "the whole scene (30x20 px)"
    np.testing.assert_array_equal(np.sort(sample.values[0]), np.sort(data[0].ravel()))


def test_a_large_scene_without_overviews_is_read_in_windows_only(tmp_path, small_limits):
    data = numbered(2, 128, 128)
    path = write_raster(tmp_path / "big.tif", data, tiled=True)
    reads = []
    with rasterio.open(path) as ds:
        read = ds.read

        def recording_read(*args, **kwargs):
            reads.append(kwargs.get("window"))
            return read(*args, **kwargs)

        ds.read = recording_read
        sample = sample_dataset(ds, [1, 2])
    assert sample.where == "16 windows of 8x8 px"
    assert len(reads) == 16 and all(w is not None and w.width == 8 for w in reads)
    assert sample.values[0].size == 16 * 64  # a sixteenth of the scene
    windows = sample_windows(128, 128, 4, 8)
    expected = np.concatenate([data[0][w.slices()].ravel() for w in windows])
    np.testing.assert_array_equal(np.sort(sample.values[0]), np.sort(expected))


def test_overviews_are_the_sample_when_the_scene_has_them(tmp_path, small_limits, monkeypatch):
    monkeypatch.setattr(samplemod, "OVERVIEW_MIN_PIXELS", 64 * 64)
    # a checkerboard of v and v + 2 (even values): the averaged overviews hold v + 1 (odd)
    rows, cols = np.indices((128, 128))
    base = 2 * (1 + (rows // 2) * 64 + cols // 2)
    data = (base + 2 * ((rows + cols) % 2)).astype(np.uint16)[None]
    path = write_raster(tmp_path / "ovr.tif", data, tiled=True)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
    with rasterio.open(path) as ds:
        sample = sample_dataset(ds, [1])
    assert sample.where == "overview 1/2 (64x64 px)"  # the coarsest with >= 64x64 px
    assert sample.values[0].size == 64 * 64
    assert np.all(sample.values[0] % 2 == 1), "values must come from the overview"


def test_a_scene_mostly_nodata_is_sampled_again_in_more_smaller_windows(tmp_path, small_limits):
    data = np.zeros((1, 128, 128), np.uint16)
    data[0, :8] = 500 + np.arange(128, dtype=np.uint16)  # valid only in a strip at the top
    path = write_raster(tmp_path / "strip.tif", data, nodata=0)
    with rasterio.open(path) as ds:
        sample = sample_dataset(ds, [1])
    assert sample.where == "256 windows of 4x4 px"
    assert sample.values[0].size >= 32 and np.all(sample.values[0] >= 500)


@pytest.mark.parametrize("how", ["nodata", "mask", "nan"])
def test_nodata_masked_and_nan_pixels_are_left_out(tmp_path, how):
    dtype = "float32" if how == "nan" else "uint16"
    data = np.full((2, 20, 20), 1000, dtype)
    data[:, :, :5] = 7  # the pixels made invalid below
    kwargs: dict = {}
    if how == "nodata":
        kwargs["nodata"] = 7
    elif how == "mask":
        kwargs["mask"] = data[0] != 7
    else:
        data[1, :, :5] = np.nan
    path = write_raster(tmp_path / f"{how}.tif", data, **kwargs)
    with rasterio.open(path) as ds:
        sample = sample_dataset(ds, [1, 2])
    assert all(np.all(v == 1000) and v.size == 300 for v in sample.values)


def test_band_facts_read_names_scale_offset_nbits_statistics_and_s2_keys(tmp_path):
    data = numbered(3, 16, 16)
    path = write_raster(tmp_path / "l2a.tif", data, descriptions=["B04", "B03", "B02"])
    with rasterio.open(path, "r+") as ds:
        ds.scales = (1e-4, 1e-4, 1e-4)
        ds.offsets = (-0.1, -0.1, -0.1)
        ds.update_tags(BOA_ADD_OFFSET="-1000", BOA_QUANTIFICATION_VALUE="10000")
        ds.update_tags(2, STATISTICS_MINIMUM="1", STATISTICS_MAXIMUM="256",
                       STATISTICS_VALID_PERCENT="100")  # fmt: skip
    with rasterio.open(path) as ds:
        facts = band_facts(ds, [1, 2])
    assert [f.name for f in facts] == ["B04", "B03"]
    assert facts[0].scale == pytest.approx(1e-4) and facts[0].offset == pytest.approx(-0.1)
    assert facts[0].boa_offset == -1000 and facts[0].quantification == 10000
    assert facts[0].stated_range is None and facts[1].stated_range == (1.0, 256.0)
    assert facts[1].valid_percent == 100.0
    eleven = tmp_path / "nbits.tif"
    with rasterio.open(eleven, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16",
                       nbits=11) as dst:  # fmt: skip
        dst.write(np.full((1, 8, 8), 2000, np.uint16))
    with rasterio.open(eleven) as ds:
        assert band_facts(ds, [1])[0].nbits == 11


def stretch_of(path, bands, spec="auto"):
    with rasterio.open(path) as ds:
        info = scene_info(ds)
    return scene_stretch(str(path), info, bands, ScaleSpec.parse(spec), UINT8)


def test_scene_stretch_on_a_file(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.integers(20, 240, (3, 40, 40)) * 8).astype(np.uint16)
    path = write_raster(tmp_path / "u16.tif", data)
    stretch = stretch_of(path, (1, 2, 3))
    assert stretch.rule == "matched" and stretch.high == (2047.0,) * 3
    assert "whole scene (40x40 px)" in stretch.note and "11-bit" in stretch.note
    data[1] = 900
    flat = write_raster(tmp_path / "flat.tif", data)
    with pytest.raises(ScaleError, match=r"band 2 \(band_2\) of .*flat.tif is constant"):
        stretch_of(flat, (1, 2, 3))
    assert stretch_of(flat, (1, 2, 3), "0,2047").rule == "window"  # what the message says to do


def test_stated_statistics_stop_the_run_before_the_sample(tmp_path, monkeypatch):
    data = numbered(2, 16, 16)
    path = write_raster(tmp_path / "stats.tif", data)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(2, STATISTICS_MINIMUM="5", STATISTICS_MAXIMUM="5")

    def no_sample(*args, **kwargs):
        raise AssertionError("the sample was read")

    monkeypatch.setattr(samplemod, "sample_dataset", no_sample)
    with pytest.raises(ScaleError, match=r"band 2 .* minimum = maximum = 5"):
        stretch_of(path, (1, 2))
