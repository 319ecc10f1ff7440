"""Value counts of an 8-bit output raster, read block by block (never the whole raster)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt


def byte_histogram(path: str | Path, band: int = 1) -> npt.NDArray[np.int64]:
    """Counts of each value 0..255 of ``band`` over its valid pixels, ``(256,)`` int64.

    Pixels equal to the band's nodata (or masked by its mask) are not counted.
    """
    import rasterio

    counts = np.zeros(256, dtype=np.int64)
    with rasterio.open(path) as src:
        for _, window in src.block_windows(band):
            data = src.read(band, window=window, masked=True)
            values = data.compressed() if np.ma.isMaskedArray(data) else data.ravel()
            counts += np.bincount(values.astype(np.int64), minlength=256)[:256]
    return counts
