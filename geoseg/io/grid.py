"""The grid a scene is read on: its ground sample distance and the model's own pixel size.

Part of the read step. A network learns objects at the ground sample distance (GSD) it was
trained at; the model card records that range (``gsd_range``, zoom augmentation included).
:func:`plan_read` decides the grid the tiles are read on, a :class:`ReadGrid`: the scene's own
(``native``), or, for a scene whose GSD lies outside the model's range (``auto``) or for an
explicit pixel size in metres, a grid over exactly the scene's extent with about that pixel
size. Tiles of such a grid are read from the scene by windowed reads with ``out_shape`` (GDAL
resampling over floating-point windows: bilinear when reading finer than the scene, which gives
every tile exactly the pixels of the whole resampled scene, and average when coarser, which may
differ from it by one level at a window's edge); see :class:`geoseg.io.read.TileReader`.
Tiling, blending, resume and the dask engine run on that grid unchanged;
:class:`geoseg.engine.regrid.Regridder` brings the results back onto the scene's own grid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.config import parse_resolution
from geoseg.errors import InputError
from geoseg.io.read import SceneInfo
from geoseg.types import PixelWindow

#: mean radius of the earth (m), for the GSD of scenes in a geographic CRS.
EARTH_RADIUS = 6_371_008.8
#: ``auto`` reads a scene finer than its own pixels by at most this factor per axis. 1: never.
#: Up-sampling makes no detail, only pixels to compute, and measured on the 5 m NAIP sample with
#: the default model (v2.3) it makes the map worse: water is 31 % of the map read natively (NDWI
#: says 33 %), 16 % read at 3 m, 10 % at 2 m and 8 % at 1.49 m, the algal lakes turning into fields
#: (benchmarks/resolution.py). A coarse scene is read natively, with a ResolutionWarning.
MAX_AUTO_UPSAMPLING = 1.0


def scene_gsd(info: SceneInfo) -> float | None:
    """The scene's ground sample distance in metres (the mean of x and y), or None if unknown.

    Projected CRSs convert their linear unit to metres; a geographic CRS is measured at the
    scene's centre (degrees of longitude shrink with the cosine of the latitude).
    """
    if not info.georeferenced or info.crs is None:
        return None
    t = info.transform
    res_x, res_y = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    crs = info.crs
    if crs.is_geographic:
        lat = (t @ (info.width / 2, info.height / 2))[1]
        metres_per_degree = math.pi / 180 * EARTH_RADIUS
        res_x *= metres_per_degree * math.cos(math.radians(max(-89.9, min(89.9, lat))))
        res_y *= metres_per_degree
        return (res_x + res_y) / 2
    factor = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return (res_x + res_y) / 2 * float(factor)


def auto_gsd(scene: float, gsd_range: tuple[float, float]) -> float:
    """The pixel size ``auto`` reads a scene of GSD ``scene`` at: the nearest inside the range.

    The least resampling that puts the scene where the model was trained: a 5 m scene is read
    at the range's coarsest pixel size, a 5 cm drone scene at its finest, and one inside it as
    it is.
    """
    low, high = gsd_range
    return min(max(scene, low), high)


@dataclass(frozen=True)
class ReadGrid:
    """The pixel grid tiles are read on: the scene's own, or a resampled one over its extent.

    ``height``/``width`` are the grid's size; ``scene_height``/``scene_width`` the scene's.
    ``gsd`` is the grid's pixel size in metres (None when the scene's is unknown).
    """

    height: int
    width: int
    scene_height: int
    scene_width: int
    gsd: float | None = None
    scene_gsd: float | None = None

    @classmethod
    def native(cls, info: SceneInfo) -> ReadGrid:
        """The scene's own grid (no resampling)."""
        gsd = scene_gsd(info)
        return cls(info.height, info.width, info.height, info.width, gsd, gsd)

    @property
    def resampled(self) -> bool:
        """Whether tiles are read resampled."""
        return (self.height, self.width) != (self.scene_height, self.scene_width)

    @property
    def scale(self) -> tuple[float, float]:
        """Grid pixels per scene pixel along y and x (above 1: read finer than the scene)."""
        return self.height / self.scene_height, self.width / self.scene_width

    def scene_window(self, window: PixelWindow) -> Any:
        """The (fractional) rasterio window of the scene that ``window`` of this grid covers."""
        from rasterio.windows import Window

        sy, sx = self.scale
        return Window(
            window.col_off / sx, window.row_off / sy, window.width / sx, window.height / sy
        )

    def transform(self, scene_transform: Any) -> Any:
        """The geotransform of this grid, given the scene's."""
        from affine import Affine

        sy, sx = self.scale
        return scene_transform @ Affine.scale(1 / sx, 1 / sy)

    note: str = ""  # why a scene outside the model's range is read natively

    def describe(self) -> str:
        """One line saying how the scene is read."""
        if not self.resampled:
            where = f" at its own {self.scene_gsd:.3g} m" if self.scene_gsd else ""
            return f"geoseg: scene read{where} (native grid)"
        return (
            f"geoseg: scene read at {self.gsd:.3g} m instead of {self.scene_gsd:.3g} m "
            f"({self.scene_width}x{self.scene_height} -> {self.width}x{self.height} px); "
            "outputs on the scene's own grid"
        )

    def settings(self) -> dict[str, Any]:
        """What the journal and ``run.json`` record."""
        return {"read_grid": [self.height, self.width], "read_gsd": self.gsd}


def plan_read(info: SceneInfo, card: Any, resolution: str | float = "auto") -> ReadGrid:
    """The grid to read ``info`` on for a model with ``card``, following ``resolution``.

    ``native`` reads the scene's own grid. ``auto`` does too unless the scene's GSD lies outside
    the card's ``gsd_range``; then it reads at the nearest pixel size inside it (:func:`auto_gsd`),
    unless that means more than :data:`MAX_AUTO_UPSAMPLING` times finer than the scene, i.e. for
    now any up-sampling (then natively, with a note saying so): ``auto`` reads a 5 cm drone scene
    at the model's finest 0.4 m, and a 5 m scene as it is. A number reads at that pixel size in
    metres. Scenes of unknown GSD (no georeferencing) and models without a recorded range are
    read natively under ``auto``.

    Raises:
        InputError: a pixel size is asked for a scene whose own pixel size is unknown.
    """
    mode = parse_resolution(resolution)
    native = ReadGrid.native(info)
    if mode == "native":
        return native
    own = native.scene_gsd
    if mode == "auto":
        if own is None or card.gsd_range is None:
            return native
        target = auto_gsd(own, card.gsd_range)
        if own / target > MAX_AUTO_UPSAMPLING:
            low, high = card.gsd_range
            return dataclasses.replace(
                native,
                note=(
                    f"; auto does not up-sample (it adds no detail, and on the 5 m sample it "
                    f"made the map worse): --resolution {target:g} reads it at the model's "
                    "coarsest pixel size"
                ),
            )
    else:
        if own is None:
            raise InputError(
                f"{info.path} has no georeferencing, so its pixel size is unknown and it cannot be "
                "read at a pixel size in metres; pass --resolution native"
            )
        target = float(mode)
    factor = own / target
    height = max(1, round(info.height * factor))
    width = max(1, round(info.width * factor))
    if (height, width) == (info.height, info.width):
        return native
    return ReadGrid(height, width, info.height, info.width, target, own)


@contextmanager
def scene_validity(
    path: str, bands: Sequence[int], width: int
) -> Iterator[Callable[[int, int], np.ndarray]]:
    """A ``validity(row_off, height)`` function over rows of the scene at ``path`` (a context).

    Validity follows the read step's rule, as :class:`geoseg.io.read.TileReader` applies it: GDAL's
    masks (or the nodata value when an alpha-tagged band holds data), and finite values in a
    floating-point scene.
    """
    import rasterio
    from rasterio.windows import Window

    from geoseg.io.read import _gdal_path, nodata_only_validity, read_validity

    with rasterio.open(_gdal_path(path)) as ds:
        nodata_only = nodata_only_validity(ds)

        is_float = np.dtype(ds.dtypes[0]).kind == "f"

        def validity(row_off: int, height: int) -> np.ndarray:
            window = Window(0, row_off, width, height)
            ok = read_validity(ds, bands, nodata_only, window=window)
            if is_float:
                ok &= np.all(np.isfinite(ds.read(list(bands), window=window)), axis=0)
            return ok

        yield validity
