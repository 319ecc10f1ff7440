"""Blending overlapping tile predictions into finished output rows, with bounded memory.

Tiles arrive in raster order. Each contributes ``weight * probability``; a pixel's class is the
argmax of the weighted sum. The stitcher keeps only what is still in flight: the blended band
below the current tile row (``overlap`` rows, full width), the band to the right of the current tile
(``overlap`` columns, one tile high) and the finished rows of the current tile row. Memory is thus
proportional to the scene *width* times the overlap, never to the scene area.

Weights along an axis are 1 in a tile's core and follow a raised-cosine ramp across each blended
overlap, so the weights of two neighbours sum to exactly 1 there. Within ``overlap // 4`` pixels of
an edge shared with a neighbour, a tile's weight is 0: predictions there see the tile border
(zero padding) in their receptive field, and the neighbour covers those pixels with full weight.
Tile edges on the scene border keep weight 1 up to the last pixel, so the summed weight is
positive everywhere inside the scene and no border pixel is ever lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from geoseg.engine.tiling import AxisLayout, TileGrid
from geoseg.types import Tile

NODATA_CLASS = 255
NODATA_CONFIDENCE = 0
NODATA_PROBABILITY = 255
PROBABILITY_SCALE = 254  # probabilities are stored as round(p * 254) so 255 stays free for nodata


def ramp(overlap: int) -> np.ndarray:
    """Weights of the tile entering a blended overlap of ``overlap`` pixels, rising 0 -> 1.

    ``ramp(n) + ramp(n)[::-1] == 1`` elementwise (a partition of unity), and ``ramp(n)`` is 0 on
    its first ``n // 4`` pixels.
    """
    margin = overlap // 4
    t = np.arange(overlap, dtype=np.float64)
    x = np.clip((t - margin + 1) / (overlap - 2 * margin + 1), 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * x)
    w[t < margin] = 0.0
    w[t >= overlap - margin] = 1.0
    return w.astype(np.float32)


def axis_weights(layout: AxisLayout, i: int) -> np.ndarray:
    """Blend weights along one axis for tile ``i``: float32 of length ``layout.size``."""
    w = np.ones(layout.size, dtype=np.float32)
    start = layout.starts[i]
    lead = layout.blend_starts[i] - start
    w[:lead] = 0.0
    ov_prev = layout.blend_overlap(i)
    if ov_prev:
        w[lead : lead + ov_prev] *= ramp(ov_prev)
    if i + 1 < len(layout.starts):
        ov_next = layout.blend_overlap(i + 1)
        nxt = layout.blend_starts[i + 1] - start
        w[nxt : nxt + ov_next] *= ramp(ov_next)[::-1]
    return w


@dataclass(frozen=True)
class Band:
    """Finished output rows ``[row_off, row_off + height)`` across the full scene width.

    ``classes`` (H, W) uint8 with 255 as nodata; ``confidence`` (H, W) uint8 = winning probability
    * 255, 0 as nodata; ``probabilities`` (K, H, W) uint8 = probability * 254, 255 as nodata.
    """

    row_off: int
    classes: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None

    @property
    def height(self) -> int:
        """Number of rows."""
        return int(self.classes.shape[0])

    def rows_from(self, row: int) -> Band:
        """The rows of this band from output row ``row`` on (those above are already written)."""
        cut = row - self.row_off
        probs = None if self.probabilities is None else self.probabilities[:, cut:]
        return Band(row, self.classes[cut:], self.confidence[cut:], probs)


class Stitcher:
    """Accepts per-tile probabilities in raster order and yields finished :class:`Band` s.

    ``first_row`` starts the stitcher part-way down the scene (a block of a distributed run, or a
    resumed run): tiles must then begin with tile row ``first_row - 1``, whose predictions only
    rebuild the blended band carried into ``first_row`` and yield nothing. One such halo row is
    enough because the carry into a tile row never reaches back past the previous one, so the
    bands from ``first_row`` on are bit-identical to those of a run started at row 0.
    """

    def __init__(
        self, grid: TileGrid, num_classes: int, *, probabilities: bool = False, first_row: int = 0
    ) -> None:
        if not 0 <= first_row < len(grid.rows.starts):
            raise ValueError(
                f"first_row {first_row} is outside tile rows 0..{len(grid.rows.starts) - 1}"
            )
        self.grid = grid
        self.k = num_classes
        self.keep_probabilities = probabilities
        self.first_row = first_row
        self._next = self.halo_row * len(grid.cols.starts)
        self._wy = [axis_weights(grid.rows, i) for i in range(len(grid.rows.starts))]
        self._wx = [axis_weights(grid.cols, i) for i in range(len(grid.cols.starts))]
        self._carry: np.ndarray | None = None  # (K + 2, rows, W): sums, weight, valid count
        self._right: np.ndarray | None = None  # (K + 2, tile-row height, overlap)
        self._band: Band | None = None

    @property
    def halo_row(self) -> int:
        """The tile row the stitcher expects first (``first_row - 1``, or 0)."""
        return max(self.first_row - 1, 0)

    def add(self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray | None) -> Iterator[Band]:
        """Blend one tile; yields the band of rows it completes (at most one).

        ``probs`` is (K, th, tw) float32 class probabilities over the tile's read window and
        ``valid`` its (th, tw) validity mask; both ``None`` for a skipped (all nodata) tile.
        """
        if tile.index != self._next:
            raise ValueError(
                f"tiles must arrive in raster order: expected {self._next}, got {tile.index}"
            )
        self._next += 1
        rows, cols = self.grid.rows, self.grid.cols
        r, c = tile.row, tile.col
        width = self.grid.width
        row_top, row_fin, row_end = rows.blend_starts[r], rows.final_until(r), rows.end(r)
        col_left, col_fin, col_end = cols.blend_starts[c], cols.final_until(c), cols.end(c)
        h, k = row_end - row_top, self.k
        priming = r < self.first_row
        if c == 0 and not priming:
            self._band = self._new_band(row_top, row_fin - row_top, width)
        buf = np.zeros((k + 2, h, col_end - col_left), dtype=np.float32)
        if self._right is not None:
            buf[:, :, : self._right.shape[2]] += self._right
        if probs is not None and valid is not None:
            lr, lc = row_top - rows.starts[r], col_left - cols.starts[c]
            sl = (slice(lr, lr + h), slice(lc, lc + buf.shape[2]))
            weight = np.outer(self._wy[r][sl[0]], self._wx[c][sl[1]])
            buf[:k] += probs[:, sl[0], sl[1]] * weight
            buf[k] += weight
            buf[k + 1] += valid[sl]
        done_w = col_fin - col_left
        self._right = buf[:, :, done_w:].copy() if c + 1 < len(cols.starts) else None
        done = buf[:, :, :done_w]
        if self._carry is not None:
            done[:, : self._carry.shape[1]] += self._carry[:, :, col_left:col_fin]
        n_final = row_fin - row_top
        if not priming:
            self._finish(done[:, :n_final], col_left)
        if r + 1 < len(rows.starts):
            if c == 0:
                self._carry_next = np.zeros((k + 2, row_end - row_fin, width), dtype=np.float32)
            self._carry_next[:, :, col_left:col_fin] = done[:, n_final:]
        if c + 1 == len(cols.starts):
            self._carry = self._carry_next if r + 1 < len(rows.starts) else None
            band, self._band = self._band, None
            if not priming:
                assert band is not None
                yield band

    def _new_band(self, row_off: int, height: int, width: int) -> Band:
        probs = None
        if self.keep_probabilities:
            probs = np.full((self.k, height, width), NODATA_PROBABILITY, dtype=np.uint8)
        return Band(
            row_off,
            np.full((height, width), NODATA_CLASS, dtype=np.uint8),
            np.full((height, width), NODATA_CONFIDENCE, dtype=np.uint8),
            probs,
        )

    def _finish(self, acc: np.ndarray, col_off: int) -> None:
        """Turn accumulated sums (K + 2, h, w) into classes/confidence in the current band."""
        band = self._band
        assert band is not None
        k = self.k
        weight = acc[k]
        ok = (acc[k + 1] > 0) & (weight > 0)
        cols = slice(col_off, col_off + acc.shape[2])
        sums = acc[:k]
        classes = np.argmax(sums, axis=0).astype(np.uint8)
        safe_w = np.where(ok, weight, 1.0)
        top = np.take_along_axis(sums, classes[None].astype(np.intp), axis=0)[0] / safe_w
        confidence = np.clip(np.rint(top * 255.0), 1, 255).astype(np.uint8)
        band.classes[:, cols] = np.where(ok, classes, NODATA_CLASS)
        band.confidence[:, cols] = np.where(ok, confidence, NODATA_CONFIDENCE)
        if band.probabilities is not None:
            scaled = np.rint(sums / safe_w * PROBABILITY_SCALE).astype(np.uint8)
            band.probabilities[:, :, cols] = np.where(ok, scaled, NODATA_PROBABILITY)
