"""Ground measures of raster-aligned geometries: area in square metres, perimeter in metres.

Projected rasters are measured in their plane (scaled by the CRS's linear unit). Geographic rasters
(degrees) are measured on their own ellipsoid: areas in the Lambert cylindrical equal-area
projection, where meridians and parallels (the pixel edges of a north-up raster) stay straight, so
the area of a polygon traced along pixel edges is exact; perimeters as sums of geodesic segment
lengths. A raster without CRS is measured in its own units.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray


@dataclass(frozen=True)
class GroundMeasure:
    """Measures geometries given in a raster's world coordinates.

    Args:
        crs_wkt: WKT of the raster's CRS, or ``None`` for an ungeoreferenced raster.
        transform: the raster's affine geotransform (pixel ``(col, row)`` to world ``(x, y)``).
        shape: raster ``(height, width)``; its centre anchors the equal-area projection.
    """

    crs_wkt: str | None
    transform: Affine
    shape: tuple[int, int]

    @property
    def is_geographic(self) -> bool:
        """Whether coordinates are longitude/latitude degrees."""
        return self.crs_wkt is not None and _crs(self.crs_wkt).is_geographic

    @property
    def unit_factor(self) -> float:
        """Metres per CRS unit for projected CRSs (1.0 where undefined)."""
        if self.crs_wkt is None or self.is_geographic:
            return 1.0
        axes = _crs(self.crs_wkt).axis_info
        factor = axes[0].unit_conversion_factor if axes else None
        return float(factor) if factor else 1.0

    def centre(self) -> tuple[float, float]:
        """World coordinates of the raster's centre."""
        height, width = self.shape
        x, y = self.transform * (width / 2.0, height / 2.0)
        return float(x), float(y)

    def measure(self, geoms: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Area (m²) and perimeter (m, holes included) of each polygon in world coordinates."""
        geoms = np.asarray(geoms, dtype=object)
        if len(geoms) == 0:
            return np.zeros(0), np.zeros(0)
        if not self.is_geographic:
            factor = self.unit_factor
            area = np.asarray(shapely.area(geoms), dtype=np.float64) * factor**2
            return area, np.asarray(shapely.length(geoms), dtype=np.float64) * factor
        assert self.crs_wkt is not None
        to_equal_area, geod = _geographic_tools(self.crs_wkt, self.centre())

        def project(xy: NDArray[np.float64]) -> NDArray[np.float64]:
            x, y = to_equal_area.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        area = shapely.area(shapely.transform(geoms, project))
        rings, ring_geom = _rings_with_geometry_index(geoms)
        xy, vertex_ring = shapely.get_coordinates(rings, return_index=True)
        same_ring = vertex_ring[1:] == vertex_ring[:-1]
        _, _, dist = geod.inv(
            xy[:-1, 0][same_ring], xy[:-1, 1][same_ring], xy[1:, 0][same_ring], xy[1:, 1][same_ring]
        )
        segment_geom = ring_geom[vertex_ring[:-1][same_ring]]
        perimeter = np.bincount(segment_geom, weights=np.asarray(dist), minlength=len(geoms))
        return np.asarray(area, dtype=np.float64), perimeter.astype(np.float64)

    def row_pixel_areas(self, rows: NDArray[np.int64]) -> NDArray[np.float64]:
        """Area (m²) of one pixel in each of ``rows``, taken at the raster's centre column.

        Constant for projected rasters; for geographic ones it shrinks towards the poles.
        """
        rows = np.asarray(rows, dtype=np.int64)
        t = self.transform
        if not self.is_geographic:
            return np.full(len(rows), abs(t.a * t.e - t.b * t.d) * self.unit_factor**2)
        col = self.shape[1] // 2
        corners = [(col, rows), (col + 1, rows), (col + 1, rows + 1), (col, rows + 1)]
        xs = [t.a * c + t.b * r + t.c for c, r in corners]
        ys = [t.d * c + t.e * r + t.f for c, r in corners]
        assert self.crs_wkt is not None
        to_equal_area, _ = _geographic_tools(self.crs_wkt, self.centre())
        px, py = zip(
            *(to_equal_area.transform(x, y) for x, y in zip(xs, ys, strict=True)), strict=True
        )
        twice_area = sum(px[i] * py[(i + 1) % 4] - px[(i + 1) % 4] * py[i] for i in range(4))
        return np.abs(np.asarray(twice_area, dtype=np.float64)) / 2.0

    def pixel_size(self) -> float:
        """Side (m) of a square with the area of the raster's centre pixel."""
        centre_row = np.array([self.shape[0] // 2], dtype=np.int64)
        return float(np.sqrt(self.row_pixel_areas(centre_row)[0]))


@functools.lru_cache(maxsize=8)
def _crs(wkt: str) -> Any:
    from pyproj import CRS

    return CRS.from_wkt(wkt)


@functools.lru_cache(maxsize=8)
def _geographic_tools(wkt: str, centre: tuple[float, float]) -> tuple[Any, Any]:
    """A transformer to an equal-area projection on the same datum, and a Geod."""
    from pyproj import Geod, Transformer
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_operation import LambertCylindricalEqualAreaConversion

    crs = _crs(wkt)
    lon, _ = centre
    # Same geodetic base as the raster, so no datum shift sneaks into the areas; centred on the
    # scene's longitude so that scenes across the antimeridian do not wrap.
    equal_area = ProjectedCRS(
        conversion=LambertCylindricalEqualAreaConversion(longitude_natural_origin=lon),
        geodetic_crs=crs.geodetic_crs,
    )
    transformer = Transformer.from_crs(crs, equal_area, always_xy=True)
    ellipsoid = crs.ellipsoid
    geod = Geod(a=ellipsoid.semi_major_metre, b=ellipsoid.semi_minor_metre)
    return transformer, geod


def _rings_with_geometry_index(geoms: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.int64]]:
    parts, part_geom = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    return rings, part_geom[ring_part]
