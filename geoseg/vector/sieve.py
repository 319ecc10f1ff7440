"""Minimum-area filtering of a class raster: small regions are absorbed into a neighbour.

The rule is global, so the result does not depend on how the raster is cut into blocks:

- a *region* is a connected set of pixels of one class (4- or 8-connected); nodata is no region;
- regions are ordered by area, larger first, ties broken by their first pixel in raster order;
- a region smaller than ``min_area`` takes the class of its highest-ordered neighbour, provided
  that neighbour ranks above it; chains (small into small) follow through to their end, so the
  absorbed pixels always join a region that is connected to them. A small region whose
  neighbours all rank below it (for example a small island inside nodata) is kept.

Evaluation is block-wise with bounded memory: pass 1 labels each block, measures its regions and
records their adjacency; regions crossing block borders are joined through the border pixels; the
decisions are then taken on per-region tables (memory grows with the number of regions, not of
pixels); pass 2 relabels each block and writes the sieved raster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray

from geoseg.types import PixelWindow
from geoseg.vector.blocks import BlockMap, facing_pairs
from geoseg.vector.measure import GroundMeasure

AREA_UNITS_PER_M2 = 10_000
"""Areas are summed as integers (cm²) so that totals do not depend on the summation order."""


@dataclass(frozen=True)
class SieveStats:
    """What a sieve changed."""

    regions: int
    regions_absorbed: int
    pixels_changed: int


@dataclass(frozen=True)
class _LabelJob:
    path: str
    window: PixelWindow
    width: int
    nodata: int | None
    connectivity: int
    row_area_units: NDArray[np.int64]  # area units of one pixel in each row of the window
    small_units: int


@dataclass(frozen=True)
class _Regions:
    """Regions of one block: their class, size and adjacency, and the labels along its sides."""

    window: PixelWindow
    count: int
    klass: NDArray[np.int64]
    pixels: NDArray[np.int64]
    area_units: NDArray[np.int64]
    anchor: NDArray[np.int64]  # first pixel in raster order, as a global linear index
    pairs: NDArray[np.int64]  # (k, 2) local labels (1-based) of adjacent regions
    top: NDArray[np.int64]
    bottom: NDArray[np.int64]
    left: NDArray[np.int64]
    right: NDArray[np.int64]


def sieve(
    src: Path,
    dst: Path,
    *,
    min_area: float,
    connectivity: int,
    blocks: list[PixelWindow],
    measure: GroundMeasure,
    map_blocks: BlockMap,
) -> SieveStats:
    """Write ``dst``: ``src`` with every region smaller than ``min_area`` (m²) absorbed.

    ``dst`` is written only where some pixel changes (``pixels_changed > 0`` in the result).

    Args:
        src: single-band integer class raster.
        dst: GeoTIFF to create (tiled, same profile).
        min_area: area threshold in square metres.
        connectivity: 4 or 8, the connectivity of regions.
        blocks: the block windows in row-major order, covering the raster without overlap.
        measure: ground measures of the raster (pixel areas per row).
        map_blocks: ``map``-like function returning results in order (may use processes).
    """
    with rasterio.open(src) as ds:
        height, width = ds.height, ds.width
        nodata = None if ds.nodata is None else int(ds.nodata)
        profile = ds.profile
    row_units = np.rint(
        measure.row_pixel_areas(np.arange(height, dtype=np.int64)) * AREA_UNITS_PER_M2
    ).astype(np.int64)
    small_units = int(np.ceil(min_area * AREA_UNITS_PER_M2))
    jobs = [
        _LabelJob(
            str(src), w, width, nodata, connectivity, row_units[w.row_off : w.row_end], small_units
        )
        for w in blocks
    ]
    tables = _RegionTables(width, connectivity)
    for regions in map_blocks(_label_block, jobs):
        tables.add(regions)
    region_of, klass, area, anchor, pairs = tables.finish()
    small = area < small_units
    final = _absorb(small, area, anchor, pairs) if small.any() else np.arange(len(klass))
    lookup = klass[final][region_of]  # new class per block-local region, in block order
    changed = lookup != tables.local_class
    pixels_changed = int(tables.local_pixels[changed].sum())
    absorbed = int(np.count_nonzero(final != np.arange(len(final))))
    if not pixels_changed:
        return SieveStats(len(klass), absorbed, 0)
    relabel_jobs = [
        (job, lookup[start : start + count] if changed[start : start + count].any() else None)
        for job, start, count in zip(jobs, tables.offsets, tables.counts, strict=True)
    ]
    out_profile = {
        **profile,
        "driver": "GTiff",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "zstd",
        "zstd_level": 1,
        "BIGTIFF": "IF_SAFER",
    }
    out_profile.pop("photometric", None)
    with rasterio.open(dst, "w", **out_profile) as out:
        try:
            out.write_colormap(1, _colormap(src))
        except ValueError:
            pass
        for window, block in map_blocks(_relabel_block, relabel_jobs):
            out.write(block, 1, window=window.to_rasterio())
    return SieveStats(len(klass), absorbed, pixels_changed)


def label_regions(
    data: NDArray[Any], nodata: int | None, connectivity: int
) -> tuple[NDArray[np.int32], NDArray[np.int64], NDArray[np.int64]]:
    """Label the regions of a class block.

    Returns:
        ``labels`` (0 = nodata, regions numbered 1..n, class by class in order of value and
        within a class in raster order of their first pixel), ``klass`` (n,) and ``first`` (n,),
        the flat index of each region's first pixel in raster order.
    """
    from scipy import ndimage  # imported here: vectorizing without min_area never needs it

    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(data.shape, dtype=np.int32)
    scratch = np.zeros(data.shape, dtype=np.int32)
    values = np.unique(data)
    classes: list[NDArray[np.int64]] = []
    firsts: list[NDArray[np.int64]] = []
    offset = 0
    for value in values:
        if nodata is not None and value == nodata:
            continue
        mask = data == value
        count = int(ndimage.label(mask, structure=structure, output=scratch))
        # ndimage numbers regions in raster order of their first pixel, so the running maximum
        # steps up exactly at each region's first pixel.
        running = np.maximum.accumulate(scratch.ravel())
        firsts.append(np.flatnonzero(np.diff(running, prepend=0) > 0).astype(np.int64))
        np.add(scratch, offset, out=labels, where=mask)
        classes.append(np.full(count, int(value), dtype=np.int64))
        offset += count
    if not classes:
        return labels, np.zeros(0, np.int64), np.zeros(0, np.int64)
    return labels, np.concatenate(classes), np.concatenate(firsts)


def _label_block(job: _LabelJob) -> _Regions:
    w = job.window
    with rasterio.open(job.path) as ds:
        data = ds.read(1, window=w.to_rasterio())
    labels, klass, first = label_regions(data, job.nodata, job.connectivity)
    n = len(klass)
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
    if np.all(job.row_area_units == job.row_area_units[0]):
        area_units = pixels * int(job.row_area_units[0])
    else:
        row_weights = np.repeat(job.row_area_units.astype(np.float64), w.width)
        area_units = np.rint(np.bincount(flat, weights=row_weights, minlength=n + 1)[1:])
        area_units = area_units.astype(np.int64)
    anchor = (w.row_off + first // w.width) * job.width + (w.col_off + first % w.width)
    candidate = np.r_[False, area_units < job.small_units]
    pairs = _adjacent_pairs(labels, job.connectivity, candidate)
    return _Regions(
        w,
        n,
        klass,
        pixels,
        area_units,
        anchor,
        pairs,
        top=labels[0].astype(np.int64),
        bottom=labels[-1].astype(np.int64),
        left=labels[:, 0].astype(np.int64),
        right=labels[:, -1].astype(np.int64),
    )


def _adjacent_pairs(
    labels: NDArray[np.int32], connectivity: int, candidate: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """Distinct pairs of touching regions where at least one may be small."""
    shifts = [
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
    ]
    if connectivity == 8:
        shifts += [(labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])]
    found = []
    for a, b in shifts:
        touching = (a != b) & (a > 0) & (b > 0)
        left, right = a[touching].astype(np.int64), b[touching].astype(np.int64)
        keep = candidate[left] | candidate[right]
        found.append(np.column_stack([left[keep], right[keep]]))
    return _unique_pairs(np.concatenate(found))


def _unique_pairs(pairs: NDArray[np.int64]) -> NDArray[np.int64]:
    if len(pairs) == 0:
        return pairs.reshape(0, 2)
    ordered = np.sort(pairs, axis=1)
    return np.unique(ordered, axis=0)


class _RegionTables:
    """Accumulates block regions (in row-major block order) into global region tables."""

    def __init__(self, width: int, connectivity: int) -> None:
        self.width = width
        self.connectivity = connectivity
        self.offsets: list[int] = []
        self.counts: list[int] = []
        self._klass: list[NDArray[np.int64]] = []
        self._pixels: list[NDArray[np.int64]] = []
        self._area: list[NDArray[np.int64]] = []
        self._anchor: list[NDArray[np.int64]] = []
        self._pairs: list[NDArray[np.int64]] = []
        self._joins: list[NDArray[np.int64]] = []
        self._total = 0
        # Global ids and classes along the bottom row of the previous block row (full width),
        # and along the right column of the previous block in the current row.
        self._above = np.full(width, -1, dtype=np.int64)
        self._above_class = np.full(width, -1, dtype=np.int64)
        self._next_above = self._above.copy()
        self._next_above_class = self._above_class.copy()
        self._row_off = -1
        self._left: tuple[NDArray[np.int64], NDArray[np.int64], int] | None = None

    def add(self, regions: _Regions) -> None:
        w = regions.window
        if w.row_off != self._row_off:
            if self._row_off >= 0:
                self._above, self._above_class = self._next_above, self._next_above_class
                self._next_above = np.full(self.width, -1, dtype=np.int64)
                self._next_above_class = np.full(self.width, -1, dtype=np.int64)
            self._row_off = w.row_off
            self._left = None
        offset = self._total
        self.offsets.append(offset)
        self.counts.append(regions.count)
        self._total += regions.count
        self._klass.append(regions.klass)
        self._pixels.append(regions.pixels)
        self._area.append(regions.area_units)
        self._anchor.append(regions.anchor)
        self._pairs.append(regions.pairs - 1 + offset)
        lookup = np.r_[-1, regions.klass]

        def ids(local: NDArray[np.int64]) -> NDArray[np.int64]:
            return np.where(local > 0, local - 1 + offset, -1)

        top, top_class = ids(regions.top), lookup[regions.top]
        if w.row_off > 0:
            lo, hi = max(w.col_off - 1, 0), min(w.col_end + 1, self.width)
            self._connect(
                top, top_class, self._above[lo:hi], self._above_class[lo:hi], w.col_off - lo
            )
        left, left_class = ids(regions.left), lookup[regions.left]
        if self._left is not None:
            prev_right, prev_right_class, _ = self._left
            self._connect(left, left_class, prev_right, prev_right_class, 0)
        self._left = (ids(regions.right), lookup[regions.right], w.col_end)
        self._next_above[w.col_off : w.col_end] = ids(regions.bottom)
        self._next_above_class[w.col_off : w.col_end] = lookup[regions.bottom]

    def _connect(
        self,
        ids: NDArray[np.int64],
        klass: NDArray[np.int64],
        other: NDArray[np.int64],
        other_class: NDArray[np.int64],
        start: int,
    ) -> None:
        """Join or pair regions across a block border.

        ``ids[k]`` faces ``other[start + k]``; with 8-connectivity also ``other[start + k ± 1]``.
        """
        pairs, same = facing_pairs(ids, klass, other, other_class, start, self.connectivity)
        self._joins.append(pairs[same])
        self._pairs.append(pairs[~same])

    @property
    def local_class(self) -> NDArray[np.int64]:
        return np.concatenate(self._klass) if self._klass else np.zeros(0, np.int64)

    @property
    def local_pixels(self) -> NDArray[np.int64]:
        return np.concatenate(self._pixels) if self._pixels else np.zeros(0, np.int64)

    def finish(self) -> tuple[NDArray[np.int64], ...]:
        """Global region of each block region, and class, area, anchor and adjacency per region."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = self._total
        joins = np.concatenate(self._joins) if self._joins else np.zeros((0, 2), np.int64)
        graph = coo_matrix((np.ones(len(joins)), (joins[:, 0], joins[:, 1])), shape=(n, n))
        _, region_of = connected_components(graph, directed=False)
        region_of = region_of.astype(np.int64)
        n_regions = int(region_of.max()) + 1 if n else 0
        klass = np.zeros(n_regions, dtype=np.int64)
        klass[region_of] = self.local_class
        area = np.zeros(n_regions, dtype=np.int64)
        np.add.at(area, region_of, np.concatenate(self._area) if n else np.zeros(0, np.int64))
        anchor = np.full(n_regions, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(anchor, region_of, np.concatenate(self._anchor) if n else anchor[:0])
        pairs = np.concatenate(self._pairs) if self._pairs else np.zeros((0, 2), np.int64)
        pairs = region_of[pairs]
        pairs = _unique_pairs(pairs[pairs[:, 0] != pairs[:, 1]])
        return region_of, klass, area, anchor, pairs


def _absorb(
    small: NDArray[np.bool_],
    area: NDArray[np.int64],
    anchor: NDArray[np.int64],
    pairs: NDArray[np.int64],
) -> NDArray[np.int64]:
    """The region whose class each region ends up with (itself where it is kept)."""
    n = len(area)
    order = np.lexsort((-anchor, area))  # ascending: smaller area, then later first pixel
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[small[both[:, 0]]]
    target = np.arange(n)
    if len(both):
        by_rank = np.lexsort((rank[both[:, 1]], both[:, 0]))
        both = both[by_rank]
        last = np.r_[both[1:, 0] != both[:-1, 0], True]
        region, best = both[last, 0], both[last, 1]
        better = rank[best] > rank[region]
        target[region[better]] = best[better]
    # Each step goes to a strictly higher rank, so pointer doubling ends in a few passes.
    while True:
        jumped = target[target]
        if np.array_equal(jumped, target):
            return target
        target = jumped


def _relabel_block(
    item: tuple[_LabelJob, NDArray[np.int64] | None],
) -> tuple[PixelWindow, NDArray[Any]]:
    job, lookup = item
    with rasterio.open(job.path) as ds:
        data = ds.read(1, window=job.window.to_rasterio())
    if lookup is None:
        return job.window, data
    labels, _, _ = label_regions(data, job.nodata, job.connectivity)
    table = np.r_[0, lookup].astype(data.dtype)
    return job.window, np.where(labels > 0, table[labels], data)


def _colormap(path: Path) -> dict[int, tuple[int, ...]]:
    with rasterio.open(path) as ds:
        return dict(ds.colormap(1))
