"""Georeferenced synthetic scenes for the benchmarks, built from the real Dubai aerial imagery.

The scene is a grid of 500 x 500 px cells; each cell is a random crop of one of the 63 real
photographs in ``../shared/data/dubai-aerial`` under a random flip/rotation, so the pixels have
the texture, colour and class mix of real aerial imagery while the scene can be any size. It is
written block row by block row (memory: one row of cells), as a tiled, deflate-compressed RGB
GeoTIFF in UTM 40N (Dubai) at 0.5 m, and cached: an existing file of the same size and seed is
reused.

    python benchmarks/synthetic.py 4096 /tmp/geoseg-bench/mosaic_4096.tif
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

CELL = 500
RESOLUTION = 0.5  # metres
ORIGIN = (300_000.0, 2_790_000.0)  # UTM 40N, Dubai
CRS = "EPSG:32640"


def default_data() -> Path:
    """``$GEOSEG_DATA``, else ``../shared/data`` next to the checkout."""
    fallback = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("GEOSEG_DATA", fallback))


def source_images(data: Path | None = None) -> list[Path]:
    """The real RGB photographs the mosaic is cut from."""
    data = data or default_data()
    images = sorted((data / "dubai-aerial").glob("tile_*/images/*.jpg"))
    if not images:
        raise SystemExit(
            f"no images under {data / 'dubai-aerial'}; set GEOSEG_DATA to the shared data folder"
        )
    return images


def _load(images: list[Path]) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in images]


def _cell(pool: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One CELL x CELL x 3 crop of a random photograph under a random dihedral transform."""
    img = pool[int(rng.integers(len(pool)))]
    h, w = img.shape[:2]
    r = int(rng.integers(0, h - CELL + 1))
    c = int(rng.integers(0, w - CELL + 1))
    crop = img[r : r + CELL, c : c + CELL]
    if rng.integers(2):
        crop = crop[:, ::-1]
    return np.rot90(crop, int(rng.integers(4)))


def build_mosaic(path: str | Path, size: int, *, seed: int = 0, data: Path | None = None) -> Path:
    """Write (or reuse) a ``size`` x ``size`` RGB uint8 mosaic GeoTIFF at ``path``."""
    path = Path(path)
    if path.exists():
        with rasterio.open(path) as ds:
            if ds.width == size and ds.height == size and ds.tags().get("seed") == str(seed):
                return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = _load(source_images(data))
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, RESOLUTION, RESOLUTION),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "predictor": 2,
        "photometric": "RGB",
        "BIGTIFF": "IF_SAFER",
    }
    tmp = path.with_name(path.name + ".part")
    ncells = -(-size // CELL)
    with rasterio.open(tmp, "w", **profile) as ds:
        ds.update_tags(seed=str(seed), source="dubai-aerial crops (MBRSC / Humans in the Loop)")
        for cell_row in range(ncells):
            row0 = cell_row * CELL
            height = min(CELL, size - row0)
            strip = np.empty((CELL, ncells * CELL, 3), dtype=np.uint8)
            for cell_col in range(ncells):
                strip[:, cell_col * CELL : (cell_col + 1) * CELL] = _cell(pool, rng)
            data_chw = np.ascontiguousarray(strip[:height, :size].transpose(2, 0, 1))
            ds.write(data_chw, window=rasterio.windows.Window(0, row0, size, height))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", type=int)
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_mosaic(args.path, args.size, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
