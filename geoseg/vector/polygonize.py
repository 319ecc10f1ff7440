"""Block-wise polygonization of a class raster, merged across block borders.

Each block is polygonized by GDAL's polygonizer (``rasterio.features.shapes``) in pixel
coordinates, so every vertex is exact. Polygons inside their block are final at once. Polygons
touching an inner block border are *pieces*: the pixels along each border tell which pieces
continue across it (same class, adjacent), a union-find groups them, and a group is fused
(coverage union) as soon as no unprocessed block can extend it, i.e. once the block row below is
done. Memory thus holds a few blocks and one block row of pieces, never the raster, and the
polygons are the same, vertex for vertex, as those of the whole raster polygonized at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import shapes

from geoseg.errors import InputError
from geoseg.types import ClassTable, PixelWindow
from geoseg.vector.blocks import BlockMap, facing_pairs
from geoseg.vector.coverage import (
    OUTSIDE,
    Geoms,
    Rings,
    assemble,
    corner_cuts,
    cut_corners,
    drop_collinear,
    explode,
    insert_points_on_lines,
    polygons_from_shapes,
)
from geoseg.vector.gpkg import FeatureBatch
from geoseg.vector.measure import GroundMeasure

EMIT_CHUNK = 20_000
"""Largest number of polygons finished (measured, encoded) at once."""
FUSE_VERTICES = 200_000
"""About how many vertices of pieces are fused at once."""

PixelPolygons = tuple[Geoms, NDArray[np.int64]]
"""Polygons in pixel coordinates and their class ids."""


@dataclass(frozen=True)
class Finisher:
    """Turns pixel-coordinate polygons into features: canonical form, world CRS, measures.

    Normalising (ring starts and orientation) makes every polygon, and the floating-point sums
    of its measures, independent of how the raster was cut into blocks.
    """

    transform: Affine
    measure: GroundMeasure
    multi: bool

    def __call__(self, geoms: Geoms, class_id: NDArray[np.int64]) -> FeatureBatch:
        """Features of ``geoms`` (pixel coordinates) with class ids ``class_id``."""
        if len(geoms) == 0:
            return FeatureBatch.concat([])
        geoms = shapely.normalize(geoms)
        if self.multi:
            parts, index = shapely.get_parts(geoms, return_index=True)
            geoms = np.asarray(shapely.multipolygons(parts, indices=index), dtype=object)
        t = self.transform

        def to_world(xy: NDArray[np.float64]) -> NDArray[np.float64]:
            x, y = xy[:, 0], xy[:, 1]
            return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])

        world = shapely.transform(geoms, to_world)
        area, perimeter = self.measure.measure(world)
        return FeatureBatch(
            np.asarray(class_id, dtype=np.int64), shapely.to_wkb(world), area, perimeter
        )


@dataclass(frozen=True)
class PolygonizeJob:
    """One block to polygonize (picklable, for worker processes)."""

    path: str
    window: PixelWindow
    shape: tuple[int, int]
    nodata: int | None
    connectivity: int
    smooth: bool
    known: frozenset[int]
    finish: Finisher | None  # None: hand back pixel polygons (the simplify path)


@dataclass(frozen=True)
class BlockPolygons:
    """One block's polygons: final ones, and pieces to merge across the block's inner borders."""

    window: PixelWindow
    done: FeatureBatch | PixelPolygons
    pieces: Geoms
    piece_class: NDArray[np.int64]
    strips: dict[str, tuple[NDArray[np.int64], NDArray[np.int64]]]
    seam_cuts: NDArray[np.int64]
    unknown: tuple[int, ...] = ()


def polygonize_block(job: PolygonizeJob) -> BlockPolygons:
    """Polygonize one block: final polygons, and pieces with their border pixels to merge."""
    w = job.window
    height, width = job.shape
    data, padded = _read_block(job)
    mask = None if job.nodata is None else data != job.nodata
    geoms, values = polygons_from_shapes(
        shapes(
            data,
            mask=mask,
            connectivity=job.connectivity,
            transform=Affine.translation(w.col_off, w.row_off),
        )
    )
    unknown = set(np.unique(values).tolist()) - job.known
    if unknown:
        empty = (np.empty(0, object), np.zeros(0, np.int64))
        return BlockPolygons(
            w, empty, empty[0], empty[1], {}, np.zeros((0, 2), np.int64), tuple(sorted(unknown))
        )
    multi = job.connectivity == 8
    if multi and len(geoms):
        # 8-connected regions touching themselves at a corner give self-touching rings.
        invalid = ~shapely.is_valid(geoms)
        if invalid.any():
            geoms[invalid] = shapely.make_valid(geoms[invalid], method="structure")
    seam_xs = np.array(
        [x for x, inner in ((w.col_off, w.col_off > 0), (w.col_end, w.col_end < width)) if inner],
        float,
    )
    seam_ys = np.array(
        [y for y, inner in ((w.row_off, w.row_off > 0), (w.row_end, w.row_end < height)) if inner],
        float,
    )
    seam_cuts = np.zeros((0, 2), np.int64)
    if job.smooth and len(geoms):
        assert padded is not None
        geoms, seam_cuts = _smooth_block(geoms, padded, w, seam_xs, seam_ys, multi)
    bounds = shapely.bounds(geoms).reshape(-1, 4)
    is_piece = (
        np.isin(bounds[:, 0], seam_xs)
        | np.isin(bounds[:, 2], seam_xs)
        | np.isin(bounds[:, 1], seam_ys)
        | np.isin(bounds[:, 3], seam_ys)
    )
    pieces, piece_class = geoms[is_piece], values[is_piece]
    strips: dict[str, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}
    if len(pieces):
        # Unit segments on the borders: pieces then match across them (coverage union needs
        # identical segments) and each such segment names the piece of one border pixel.
        rings = insert_points_on_lines(explode(pieces), xs=seam_xs, ys=seam_ys)
        pieces = assemble(rings, multi=multi)
        strips = _border_strips(rings, data, job)
    final, final_class = geoms[~is_piece], values[~is_piece]
    done = job.finish(final, final_class) if job.finish else (final, final_class)
    return BlockPolygons(w, done, pieces, piece_class, strips, seam_cuts)


def _read_block(job: PolygonizeJob) -> tuple[NDArray[Any], NDArray[np.int32] | None]:
    """The block; with ``smooth`` also the block with a one-pixel halo.

    Halo pixels beyond the raster edge hold ``OUTSIDE``, for
    :func:`~geoseg.vector.coverage.corner_cuts`.
    """
    w = job.window
    height, width = job.shape
    with rasterio.open(job.path) as ds:
        if not job.smooth:
            return ds.read(1, window=w.to_rasterio()), None
        r0, c0 = max(w.row_off - 1, 0), max(w.col_off - 1, 0)
        r1, c1 = min(w.row_end + 1, height), min(w.col_end + 1, width)
        inner = ds.read(1, window=PixelWindow(r0, c0, r1 - r0, c1 - c0).to_rasterio())
    padded = np.full((w.height + 2, w.width + 2), OUTSIDE, dtype=np.int32)
    top, left = r0 - (w.row_off - 1), c0 - (w.col_off - 1)
    padded[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
    return np.ascontiguousarray(padded[1:-1, 1:-1]).astype(inner.dtype), padded


def _smooth_block(
    geoms: Geoms,
    padded: NDArray[np.int32],
    w: PixelWindow,
    seam_xs: NDArray[np.float64],
    seam_ys: NDArray[np.float64],
    multi: bool,
) -> tuple[Geoms, NDArray[np.int64]]:
    """Cut this block's chamferable corners; corners on inner borders are cut after merging."""
    grid = corner_cuts(padded)
    rings = explode(geoms)
    x = rings.xy[:, 0].astype(np.int64)
    y = rings.xy[:, 1].astype(np.int64)
    cut = grid[y - w.row_off, x - w.col_off]
    on_seam = np.isin(rings.xy[:, 0], seam_xs) | np.isin(rings.xy[:, 1], seam_ys)
    seam_cuts = np.unique(np.column_stack([x, y])[cut & on_seam], axis=0)
    smoothed = assemble(cut_corners(rings, cut & ~on_seam), multi=multi)
    return smoothed, seam_cuts


def _border_strips(
    rings: Rings, data: NDArray[Any], job: PolygonizeJob
) -> dict[str, tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Piece index and class of each pixel along the block's inner borders (-1: none/nodata).

    ``rings`` are the pieces' rings with unit segments on the borders: a segment on a border
    line is the outer edge of exactly one border pixel, the one its piece holds.
    """
    w = job.window
    height, width = job.shape
    _, following = rings.neighbours()
    a, b = rings.xy, rings.xy[following]
    piece = rings.part_geom[rings.ring_part[rings.vertex_ring()]]
    sides = {
        # name: (is an inner border, coordinate axis along it, axis across it, line, pixels)
        "top": (w.row_off > 0, 0, 1, w.row_off, data[0]),
        "bottom": (w.row_end < height, 0, 1, w.row_end, data[-1]),
        "left": (w.col_off > 0, 1, 0, w.col_off, data[:, 0]),
        "right": (w.col_end < width, 1, 0, w.col_end, data[:, -1]),
    }
    strips = {}
    for name, (inner, along, across, line, values) in sides.items():
        if not inner:
            continue
        on_line = (a[:, across] == line) & (b[:, across] == line)
        start = w.col_off if along == 0 else w.row_off
        position = np.minimum(a[on_line, along], b[on_line, along]).astype(np.int64) - start
        ids = np.full(len(values), -1, dtype=np.int64)
        ids[position] = piece[on_line]
        klass = values.astype(np.int64)
        if job.nodata is not None:
            klass[values == job.nodata] = -1
        strips[name] = (ids, klass)
    return strips


class BorderMerger:
    """Groups pieces across block borders (union-find) and fuses each group once complete."""

    def __init__(self, height: int, width: int, connectivity: int, smooth: bool) -> None:
        self.height, self.width = height, width
        self.connectivity = connectivity
        self.smooth = smooth
        self.geoms: dict[int, Any] = {}
        self.klass: dict[int, int] = {}
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}
        self.next_id = 0
        self.above = np.full(width, -1, dtype=np.int64)
        self.above_class = np.full(width, -1, dtype=np.int64)
        self.below = self.above.copy()
        self.below_class = self.above_class.copy()
        self.left: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None
        self.row_off = -1
        self.seam_cuts: list[NDArray[np.int64]] = []

    def add(self, block: BlockPolygons) -> list[int]:
        """Register a block's pieces (blocks in row-major order).

        Returns:
            The groups that the block's arrival completed (those of the previous block row
            that do not reach this row), to be passed to :meth:`fuse`.
        """
        complete: list[int] = []
        w = block.window
        if w.row_off != self.row_off:
            if self.row_off >= 0:
                complete = self._close_row()
            self.row_off = w.row_off
            self.left = None
        ids = self.next_id + np.arange(len(block.pieces))
        self.next_id += len(block.pieces)
        for gid, geom, klass in zip(
            ids.tolist(), block.pieces, block.piece_class.tolist(), strict=True
        ):
            self.geoms[gid] = geom
            self.klass[gid] = klass
            self.parent[gid] = gid
            self.members[gid] = [gid]
        if len(block.seam_cuts):
            self.seam_cuts.append(block.seam_cuts)
        lookup = np.r_[ids, -1]  # local -1 maps to -1

        def strip(name: str) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
            if name not in block.strips:
                return None
            local, klass = block.strips[name]
            return lookup[local], klass

        top = strip("top")
        if top is not None:
            lo, hi = max(w.col_off - 1, 0), min(w.col_end + 1, self.width)
            self._connect(*top, self.above[lo:hi], self.above_class[lo:hi], w.col_off - lo)
        left = strip("left")
        if left is not None and self.left is not None:
            self._connect(*left, *self.left, 0)
        self.left = strip("right")
        bottom = strip("bottom")
        if bottom is not None:
            self.below[w.col_off : w.col_end], self.below_class[w.col_off : w.col_end] = bottom
        return complete

    def finish(self) -> list[int]:
        """All groups still open: complete once the last block is in."""
        return list(self.members)

    def fuse(self, groups: list[int]) -> Iterator[PixelPolygons]:
        """The polygons of complete ``groups``, fused in chunks.

        A block row can complete many groups; chunks of about ``FUSE_VERTICES`` vertices keep
        the fusing arrays small.
        """
        chunk: list[int] = []
        vertices = 0
        for root in groups:
            chunk.append(root)
            parts = [self.geoms[g] for g in self.members[root]]
            vertices += int(shapely.get_num_coordinates(parts).sum())
            if vertices >= FUSE_VERTICES:
                yield self._fuse(chunk)
                chunk, vertices = [], 0
        if chunk:
            yield self._fuse(chunk)

    def _connect(
        self,
        ids: NDArray[np.int64],
        klass: NDArray[np.int64],
        other: NDArray[np.int64],
        other_class: NDArray[np.int64],
        start: int,
    ) -> None:
        """Union the pieces facing each other across a border.

        ``ids[k]`` faces ``other[start + k]`` and, with 8-connectivity, its two diagonal
        neighbours.
        """
        pairs, same = facing_pairs(ids, klass, other, other_class, start, self.connectivity)
        for a, b in np.unique(pairs[same], axis=0).tolist():
            self._union(a, b)

    def _find(self, gid: int) -> int:
        root = gid
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[gid] != root:
            self.parent[gid], gid = root, self.parent[gid]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))

    def _close_row(self) -> list[int]:
        open_below = {self._find(g) for g in self.below[self.below >= 0].tolist()}
        complete = [root for root in self.members if root not in open_below]
        self.above, self.above_class = self.below, self.below_class
        self.below = np.full(self.width, -1, dtype=np.int64)
        self.below_class = np.full(self.width, -1, dtype=np.int64)
        return complete

    def _fuse(self, roots: list[int]) -> PixelPolygons:
        fused, klass = [], []
        for root in roots:
            members = self.members.pop(root)
            parts = [self.geoms.pop(g) for g in members]
            klass.append(self.klass[root])
            for g in members:
                del self.parent[g], self.klass[g]
            fused.append(parts[0] if len(parts) == 1 else shapely.coverage_union_all(parts))
        if not fused:
            return np.empty(0, dtype=object), np.zeros(0, dtype=np.int64)
        multi = self.connectivity == 8
        rings = drop_collinear(explode(np.asarray(fused, dtype=object)))
        if self.smooth and self.seam_cuts:
            cuts = np.concatenate(self.seam_cuts)
            key = (self.height + 1) * cuts[:, 0] + cuts[:, 1]
            vertex_key = (self.height + 1) * rings.xy[:, 0].astype(np.int64) + rings.xy[:, 1]
            integral = np.all(rings.xy == np.round(rings.xy), axis=1)
            cut = integral & np.isin(vertex_key.astype(np.int64), key)
            if cut.any():
                rings = cut_corners(rings, cut)
        return assemble(rings, multi=multi), np.asarray(klass, dtype=np.int64)


def polygon_stream(
    jobs: list[PolygonizeJob],
    map_blocks: BlockMap,
    src: Path,
    table: ClassTable,
    connectivity: int,
    smooth: bool,
) -> Iterator[FeatureBatch | PixelPolygons]:
    """Polygons in output order: each block's final ones, then groups completed by its row."""
    if not jobs:
        return
    height, width = jobs[0].shape
    finish = jobs[0].finish
    merger = BorderMerger(height, width, connectivity, smooth)

    def ready(polygons: PixelPolygons) -> Iterator[FeatureBatch | PixelPolygons]:
        geoms, klass = polygons
        for start in range(0, len(geoms), EMIT_CHUNK):
            chunk = slice(start, start + EMIT_CHUNK)
            yield finish(geoms[chunk], klass[chunk]) if finish else (geoms[chunk], klass[chunk])

    for block in map_blocks(polygonize_block, jobs):
        if block.unknown:
            raise InputError(
                f"{src} holds pixel values {list(block.unknown)} that the class table does not "
                f"name (it has ids {[c.id for c in table]}); pass --classes with a YAML entry "
                "for each value, or set the raster's nodata value"
            )
        yield block.done
        for polygons in merger.fuse(merger.add(block)):
            yield from ready(polygons)
    for polygons in merger.fuse(merger.finish()):
        yield from ready(polygons)
