from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import CRS
from rasterio.transform import from_origin

from geoseg.vector.blocks import block_windows
from geoseg.vector.measure import GroundMeasure
from geoseg.vector.sieve import label_regions, sieve
from tests.conftest import write_raster

NODATA = 255
TRANSFORM = from_origin(0.0, 1000.0, 1.0, 1.0)  # 1 m² pixels: min_area counts pixels


def run_sieve(tmp_path: Path, data: np.ndarray, min_area: float, *, block: int = 1000,
              connectivity: int = 4) -> tuple[np.ndarray, object]:  # fmt: skip
    src = write_raster(tmp_path / f"in{block}.tif", data[None], transform=TRANSFORM, nodata=NODATA)
    dst = tmp_path / f"out{block}.tif"
    measure = GroundMeasure(CRS.from_epsg(32633).to_wkt(), TRANSFORM, data.shape)
    stats = sieve(
        src,
        dst,
        min_area=min_area,
        connectivity=connectivity,
        blocks=block_windows(*data.shape, block),
        measure=measure,
        map_blocks=lambda fn, items: map(fn, items),
    )
    if not stats.pixels_changed:
        assert not dst.exists()
        return data, stats
    with rasterio.open(dst) as ds:
        return ds.read(1), stats


def test_label_regions_numbers_classes_in_raster_order():
    data = np.array([[1, 1, 0], [0, 1, 0], [1, 0, NODATA]], dtype=np.uint8)
    labels, klass, first = label_regions(data, NODATA, 4)
    assert klass.tolist() == [0, 0, 0, 1, 1]
    assert labels.tolist() == [[4, 4, 1], [2, 4, 1], [5, 3, 0]]
    assert first.tolist() == [2, 3, 7, 0, 6]
    labels8, klass8, _ = label_regions(data, NODATA, 8)
    assert len(klass8) == 2  # diagonal pixels join with 8-connectivity


def test_small_regions_take_the_class_of_their_largest_neighbour(tmp_path):
    data = np.zeros((8, 8), dtype=np.uint8)
    data[:, 4:] = 1  # class 0 and class 1 halves, 32 px each ...
    data[0:4, 4:] = 2  # ... now class 1 has 16 px and class 2 has 16 px
    data[3, 3] = 3  # touches class 0 (31 px) and class 1 (16 px) -> 0
    data[4, 4] = 3  # touches class 0 and class 1 -> 0 (the larger)
    data[3, 5] = 3  # touches class 2 (15 px) and class 1 (15 px): a tie on area ...
    out, stats = run_sieve(tmp_path, data, min_area=2)
    assert out[3, 3] == 0 and out[4, 4] == 0
    assert out[3, 5] == 2  # ... broken by the first pixel in raster order: class 2 comes first
    assert stats.regions_absorbed == 3 and stats.pixels_changed == 3


def test_chains_of_small_regions_end_in_a_large_one(tmp_path):
    data = np.full((5, 8), NODATA, dtype=np.uint8)
    data[1:4, 0:4] = 0  # 12 px of class 0
    data[2, 4:6] = 3  # 2 px of class 3 touching class 0
    data[2, 6] = 1  # 1 px touching only the class-3 region (and nodata)
    data[0, 7] = 2  # 1 px touching nothing
    out, stats = run_sieve(tmp_path, data, min_area=3)
    # class 1 -> class 3 (its only, larger neighbour), which itself goes to class 0
    assert out[2, 4:7].tolist() == [0, 0, 0]
    assert out[0, 7] == 2
    assert (out[data == NODATA] == NODATA).all()
    assert stats.regions_absorbed == 2 and stats.pixels_changed == 3


def test_islands_without_larger_neighbours_stay(tmp_path):
    data = np.full((6, 6), NODATA, dtype=np.uint8)
    data[2, 2] = 1  # alone in nodata
    data[4, 3:5] = [2, 3]  # two 1 px regions touching only each other: equal area
    out, stats = run_sieve(tmp_path, data, min_area=5)
    assert out[2, 2] == 1
    assert out[4, 3] == 2 and out[4, 4] == 2  # the later one joins the earlier one
    assert stats.regions == 3 and stats.pixels_changed == 1


def test_nothing_to_do_writes_nothing(tmp_path):
    data = np.zeros((4, 4), dtype=np.uint8)
    data[:, 2:] = 1
    out, stats = run_sieve(tmp_path, data, min_area=4)
    assert stats.pixels_changed == 0 and stats.regions == 2
    assert out is data


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("block", [5, 16])
def test_blocks_give_the_whole_raster_result(tmp_path, connectivity, block):
    rng = np.random.default_rng(connectivity * 100 + block)
    data = rng.integers(0, 3, (37, 41)).astype(np.uint8)
    data[rng.random(data.shape) < 0.05] = NODATA
    whole, whole_stats = run_sieve(tmp_path, data, 4, connectivity=connectivity)
    blocks, block_stats = run_sieve(tmp_path, data, 4, connectivity=connectivity, block=block)
    np.testing.assert_array_equal(whole, blocks)
    assert whole_stats == block_stats
    assert (whole != data).sum() == whole_stats.pixels_changed > 0
    # what is left small had no larger neighbour to go to
    labels, klass, _ = label_regions(whole, NODATA, connectivity)
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= 1 and (whole == NODATA).sum() == (data == NODATA).sum()


def test_geographic_min_area_uses_true_pixel_areas(tmp_path):
    # 0.001° pixels at 70°N: about 38 m x 111.7 m = 4240 m² each
    transform = from_origin(20.0, 70.0, 0.001, 0.001)
    data = np.zeros((10, 10), dtype=np.uint8)
    data[5, 5] = 1
    data[2, 2:4] = 2
    src = write_raster(tmp_path / "g.tif", data[None], crs="EPSG:4326", transform=transform)
    measure = GroundMeasure(CRS.from_epsg(4326).to_wkt(), transform, data.shape)
    common = {"connectivity": 4, "blocks": block_windows(10, 10, 4), "measure": measure,
              "map_blocks": lambda fn, items: map(fn, items)}  # fmt: skip
    stats = sieve(src, tmp_path / "a.tif", min_area=5000.0, **common)
    assert stats.pixels_changed == 1  # one pixel is below 5000 m², two are above
    stats = sieve(src, tmp_path / "b.tif", min_area=9000.0, **common)
    assert stats.pixels_changed == 3
