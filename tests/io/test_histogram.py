"""Byte histograms of output rasters, read block by block, nodata left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from geoseg.io.histogram import byte_histogram


def test_counts_every_valid_pixel_once(tmp_path: Path) -> None:
    data = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % 256
    data = data.astype(np.uint8)
    data[:4] = 0
    path = tmp_path / "conf.tif"
    profile = dict(
        driver="GTiff", width=64, height=64, count=1, dtype="uint8", nodata=0,
        transform=from_origin(0, 64, 1, 1), tiled=True, blockxsize=16, blockysize=16,
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    counts = byte_histogram(path)
    expected = np.bincount(data[data != 0].ravel(), minlength=256)
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 0 and counts.sum() == int((data != 0).sum())
