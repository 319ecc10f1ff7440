"""Ring surgery on polygon coverages traced along pixel edges, keeping the coverage valid.

Polygons arrive in pixel coordinates (``x`` = column, ``y`` = row), so every vertex is a multiple of
0.5 and every test below is exact in floating point. The operations work on all rings of many
polygons at once (vectorised with numpy and shapely 2), never polygon by polygon:

- :func:`polygons_from_shapes` turns ``rasterio.features.shapes`` output into shapely polygons;
- :func:`drop_collinear` removes vertices that lie on a straight run (the canonical form GDAL's
  polygonizer emits, so merged pieces compare equal to whole-raster polygons);
- :func:`cut_corners` smooths the pixel staircase by cutting chosen corners with a 45° chamfer
  confined to one pixel, so both neighbours of a shared edge get the same cut;
- :func:`insert_points_on_lines` and :func:`insert_nodes` add vertices so that neighbours share
  identical segments (edge-matched coverages, which GEOS coverage operations require).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

Geoms = NDArray[Any]  # object array of shapely geometries
IntArray = NDArray[np.int64]


def polygons_from_shapes(
    shapes: Iterable[tuple[dict[str, Any], float]], chunk: int = 2048
) -> tuple[Geoms, NDArray[np.int64]]:
    """Shapely polygons and their values from ``rasterio.features.shapes`` output.

    Builds the rings of ``chunk`` features at a time with one ``numpy.fromiter`` pass, several
    times faster than ``shapely.geometry.shape`` per feature, and without ever holding more than
    ``chunk`` GeoJSON-like features in memory.
    """
    stream = iter(shapes)
    polygons: list[Geoms] = []
    values: list[NDArray[np.int64]] = []
    while features := list(islice(stream, chunk)):
        chunk_values = np.fromiter((v for _, v in features), np.float64, count=len(features))
        polygon_rings = [geometry["coordinates"] for geometry, _ in features]
        del features
        rings_per_polygon = np.fromiter(map(len, polygon_rings), np.int64, len(polygon_rings))
        all_rings = list(chain.from_iterable(polygon_rings))
        ring_lengths = np.fromiter(map(len, all_rings), dtype=np.int64, count=len(all_rings))
        flat = chain.from_iterable(chain.from_iterable(all_rings))
        xy = np.fromiter(flat, np.float64, count=2 * int(ring_lengths.sum())).reshape(-1, 2)
        ring_index = np.repeat(np.arange(len(ring_lengths)), ring_lengths)
        rings = shapely.linearrings(xy, indices=ring_index)
        polygon_index = np.repeat(np.arange(len(polygon_rings)), rings_per_polygon)
        polygons.append(np.asarray(shapely.polygons(rings, indices=polygon_index), dtype=object))
        values.append(chunk_values.astype(np.int64))
    if not polygons:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    return np.concatenate(polygons), np.concatenate(values)


@dataclass(frozen=True)
class Rings:
    """All rings of a geometry array as one open vertex array (closing vertices dropped).

    ``xy[start[i]:start[i + 1]]`` is ring ``i``; ``ring_part[i]`` is its polygon part (the first
    ring of each part is the shell) and ``part_geom[j]`` the input geometry of part ``j``.
    """

    xy: NDArray[np.float64]
    start: IntArray
    ring_part: IntArray
    part_geom: IntArray
    n_geoms: int

    @property
    def lengths(self) -> IntArray:
        """Number of vertices of each ring."""
        return np.diff(self.start)

    def vertex_ring(self) -> IntArray:
        """Ring index of each vertex."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)

    def neighbours(self) -> tuple[IntArray, IntArray]:
        """Indices of the previous and next vertex of each vertex within its ring."""
        ring = self.vertex_ring()
        first = self.start[:-1][ring]
        length = self.lengths[ring]
        offset = np.arange(len(self.xy)) - first
        return first + (offset - 1) % length, first + (offset + 1) % length

    def with_vertices(self, xy: NDArray[np.float64], ring: IntArray) -> Rings:
        """The same rings with new vertices (``ring`` gives each vertex's ring, ascending)."""
        counts = np.bincount(ring, minlength=len(self.lengths))
        start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Rings(xy, start, self.ring_part, self.part_geom, self.n_geoms)

    def keep(self, mask: NDArray[np.bool_]) -> Rings:
        """Only the vertices where ``mask`` is true."""
        return self.with_vertices(self.xy[mask], self.vertex_ring()[mask])


def explode(geoms: Geoms) -> Rings:
    """The rings of polygons or multipolygons as one open vertex array."""
    geoms = np.asarray(geoms, dtype=object)
    parts, part_geom = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    xy, vertex_ring = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(vertex_ring, minlength=len(rings))
    closing = np.cumsum(counts) - 1
    keep = np.ones(len(xy), dtype=bool)
    keep[closing] = False
    start = np.concatenate([[0], np.cumsum(counts - 1)]).astype(np.int64)
    return Rings(
        xy[keep], start, ring_part.astype(np.int64), part_geom.astype(np.int64), len(geoms)
    )


def assemble(rings: Rings, *, multi: bool) -> Geoms:
    """Polygons (or multipolygons when ``multi``) from rings, in the original geometry order."""
    if rings.n_geoms == 0:
        return np.empty(0, dtype=object)
    linear = shapely.linearrings(rings.xy, indices=rings.vertex_ring())
    parts = shapely.polygons(linear, indices=rings.ring_part)
    if multi:
        return np.asarray(shapely.multipolygons(parts, indices=rings.part_geom), dtype=object)
    if len(parts) != rings.n_geoms:
        raise ValueError("multi-part geometries need multi=True")
    return np.asarray(parts, dtype=object)


def drop_duplicates(rings: Rings) -> Rings:
    """Remove vertices equal to their predecessor (wrapping around each ring)."""
    previous, _ = rings.neighbours()
    same = np.all(rings.xy == rings.xy[previous], axis=1)
    return rings.keep(~same)


def drop_collinear(rings: Rings) -> Rings:
    """Remove vertices lying on a straight run (also where a ring starts mid-run)."""
    rings = drop_duplicates(rings)
    previous, following = rings.neighbours()
    d_in = rings.xy - rings.xy[previous]
    d_out = rings.xy[following] - rings.xy
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    return rings.keep(cross != 0)


def cut_corners(rings: Rings, cut: NDArray[np.bool_]) -> Rings:
    """Replace each vertex flagged in ``cut`` by two points half a pixel along its two edges.

    The chamfer lies in the one pixel that the corner encloses, so cutting a vertex that only two
    polygons share (a "3-1" corner of the 2x2 pixels around it) keeps the coverage exact: the other
    polygon has the same vertex and gets the same cut. Collinear runs are merged afterwards.
    """
    previous, following = rings.neighbours()
    counts = 1 + cut.astype(np.int64)
    source = np.repeat(np.arange(len(rings.xy)), counts)
    xy = rings.xy[source].copy()
    first_of_pair = np.flatnonzero(cut[source] & (np.diff(np.r_[-1, source]) != 0))
    vertex = source[first_of_pair]
    towards_previous = _unit(rings.xy[previous[vertex]] - rings.xy[vertex])
    towards_following = _unit(rings.xy[following[vertex]] - rings.xy[vertex])
    xy[first_of_pair] = rings.xy[vertex] + 0.5 * towards_previous
    xy[first_of_pair + 1] = rings.xy[vertex] + 0.5 * towards_following
    return drop_collinear(rings.with_vertices(xy, rings.vertex_ring()[source]))


def insert_points(
    rings: Rings,
    counts: IntArray,
    point: Callable[[IntArray, IntArray], NDArray[np.float64]],
) -> Rings:
    """Insert ``counts[i]`` points after vertex ``i``; ``point(i, k)`` gives the ``k``-th one."""
    if not counts.any():
        return rings
    source = np.repeat(np.arange(len(rings.xy)), 1 + counts)
    group_start = np.repeat(np.cumsum(1 + counts) - (1 + counts), 1 + counts)
    k = np.arange(len(source)) - group_start - 1  # -1 for the original vertex itself
    xy = rings.xy[source].copy()
    inserted = k >= 0
    xy[inserted] = point(source[inserted], k[inserted])
    return rings.with_vertices(xy, rings.vertex_ring()[source])


def insert_points_on_lines(
    rings: Rings, *, xs: NDArray[np.float64], ys: NDArray[np.float64]
) -> Rings:
    """Add a vertex at every integer point of segments lying on the lines ``x in xs``/``y in ys``.

    Pieces of one polygon cut at block borders are densified like this so that the pieces on
    both sides of a border share identical segments, as coverage union requires.
    """
    _, following = rings.neighbours()
    a, b = rings.xy, rings.xy[following]
    vertical = (a[:, 0] == b[:, 0]) & np.isin(a[:, 0], xs)
    horizontal = (a[:, 1] == b[:, 1]) & np.isin(a[:, 1], ys)
    length = np.abs(b - a).sum(axis=1)
    counts = np.where(vertical | horizontal, np.maximum(np.ceil(length) - 1, 0), 0).astype(np.int64)
    direction = _unit(b - a)

    def point(i: IntArray, k: IntArray) -> NDArray[np.float64]:
        return a[i] + (k + 1)[:, None] * direction[i]

    return insert_points(rings, counts, point)


def insert_nodes(rings: Rings) -> Rings:
    """Add every coverage vertex that lies inside another ring's axis-parallel segment.

    GDAL's polygonizer drops collinear vertices, so where three polygons meet in a "T" the polygon
    running straight through lacks the vertex its two neighbours have. GEOS coverage operations
    need neighbours to share identical segments; this restores them. Only axis-parallel segments
    can pass through a vertex of a pixel coverage (chamfers never do).
    """
    if len(rings.xy) == 0:
        return rings
    scaled = np.rint(rings.xy * 2).astype(np.int64)
    unique = np.unique(scaled, axis=0)
    base = int(np.abs(unique).max()) * 2 + 3
    shift = base // 2
    by_row = np.sort((unique[:, 1] + shift) * base + (unique[:, 0] + shift))
    by_col = np.sort((unique[:, 0] + shift) * base + (unique[:, 1] + shift))
    _, following = rings.neighbours()
    a, b = scaled, scaled[following]
    horizontal = (a[:, 1] == b[:, 1]) & (a[:, 0] != b[:, 0])
    vertical = (a[:, 0] == b[:, 0]) & (a[:, 1] != b[:, 1])
    line = np.where(horizontal, a[:, 1], a[:, 0]) + shift
    lo_pos = np.where(horizontal, np.minimum(a[:, 0], b[:, 0]), np.minimum(a[:, 1], b[:, 1]))
    hi_pos = np.where(horizontal, np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1]))
    lo_key, hi_key = line * base + lo_pos + shift, line * base + hi_pos + shift
    lo = np.where(
        horizontal,
        np.searchsorted(by_row, lo_key, "right"),
        np.searchsorted(by_col, lo_key, "right"),
    )
    hi = np.where(
        horizontal, np.searchsorted(by_row, hi_key, "left"), np.searchsorted(by_col, hi_key, "left")
    )
    counts = np.where(horizontal | vertical, np.maximum(hi - lo, 0), 0).astype(np.int64)
    ascending = np.where(horizontal, b[:, 0] > a[:, 0], b[:, 1] > a[:, 1])

    def point(i: IntArray, k: IntArray) -> NDArray[np.float64]:
        index = np.where(ascending[i], lo[i] + k, hi[i] - 1 - k)
        key = np.where(horizontal[i], by_row[index], by_col[index])
        along = key % base - shift
        across = key // base - shift
        x = np.where(horizontal[i], along, across)
        y = np.where(horizontal[i], across, along)
        return np.column_stack([x, y]).astype(np.float64) / 2.0

    return insert_points(rings, counts, point)


def corner_cuts(pixels: NDArray[np.int32]) -> NDArray[np.bool_]:
    """Which pixel corners two polygons share alone, as a "3-1" corner: those may be chamfered.

    Args:
        pixels: class values of a block with a one-pixel halo, shape ``(h + 2, w + 2)``; pixels
            outside the raster hold a value no class uses, so the raster frame is never cut.

    Returns:
        Boolean grid of shape ``(h + 1, w + 1)``: entry ``(i, j)`` is the corner at block pixel
        coordinates ``x = j``, ``y = i`` (the corner shared by pixels ``(i-1, j-1)`` to ``(i, j)``).
    """
    a, b = pixels[:-1, :-1], pixels[:-1, 1:]
    c, d = pixels[1:, :-1], pixels[1:, 1:]
    lone_d = (a == b) & (a == c) & (a != d)
    lone_c = (a == b) & (a == d) & (a != c)
    lone_b = (a == c) & (a == d) & (a != b)
    lone_a = (b == c) & (b == d) & (b != a)
    cut = lone_a | lone_b | lone_c | lone_d
    outside = np.int32(OUTSIDE)
    touches_frame = (a == outside) | (b == outside) | (c == outside) | (d == outside)
    return np.asarray(cut & ~touches_frame)


OUTSIDE = -1
"""Fill value for halo pixels beyond the raster edge in :func:`corner_cuts`."""


def _unit(vectors: NDArray[np.float64]) -> NDArray[np.float64]:
    norm = np.hypot(vectors[:, 0], vectors[:, 1])
    return vectors / np.where(norm == 0, 1.0, norm)[:, None]
