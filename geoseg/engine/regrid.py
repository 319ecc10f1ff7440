"""Bringing blended probabilities from a resampled read grid back onto the scene's own grid.

Part of the stitch step. When tiles were read on a :class:`~geoseg.io.grid.ReadGrid` other than
the scene's (``--resolution``), a :class:`Regridder` turns its blended probabilities, band by
band in row order, into classes, confidence and probabilities on the scene's own grid (bilinear
interpolation of the probabilities, then the winning class), so every output keeps the scene's
CRS, transform and size, with nodata where the scene is nodata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geoseg.engine.stitch import (
    NODATA_CLASS,
    NODATA_CONFIDENCE,
    NODATA_PROBABILITY,
    PROBABILITY_SCALE,
    Band,
)
from geoseg.io.grid import ReadGrid

#: Scene rows handed to the sink at a time (bounds the memory of one regridded band).
MAX_BAND_ROWS = 256


@dataclass(frozen=True)
class _Axis:
    """Bilinear sampling along one axis: output pixel i mixes grid pixels lo[i] and hi[i]."""

    lo: np.ndarray
    hi: np.ndarray
    w: np.ndarray  # weight of hi

    @classmethod
    def between(cls, grid: int, scene: int) -> _Axis:
        centres = (np.arange(scene) + 0.5) * (grid / scene) - 0.5
        lo = np.clip(np.floor(centres), 0, grid - 1).astype(np.intp)
        hi = np.minimum(lo + 1, grid - 1)
        w = np.clip(centres - lo, 0.0, 1.0).astype(np.float32)
        w[hi == lo] = 0.0
        return cls(lo, hi, w)


class Regridder:
    """Turns bands of a :class:`ReadGrid` (with probabilities) into bands of the scene's grid.

    Bands arrive in row order, starting at any band that holds the grid row needed by scene row
    ``first_row`` (a resumed run); finished scene bands go to ``sink`` in row order. Each scene
    pixel bilinearly mixes the valid probabilities of its four nearest grid pixels (weights of
    invalid ones dropped, the rest renormalised); the winning class and its probability give
    ``classes`` and ``confidence``, as the stitcher's do. ``validity(row_off, height)`` gives
    the scene's own validity for those rows: a pixel invalid there is nodata whatever the grid
    says, so nodata follows the input exactly.
    """

    def __init__(
        self,
        grid: ReadGrid,
        num_classes: int,
        sink: Callable[[Band], None],
        validity: Callable[[int, int], np.ndarray],
        *,
        probabilities: bool = False,
        first_row: int = 0,
    ) -> None:
        self.grid = grid
        self.k = num_classes
        self.sink = sink
        self.validity = validity
        self.keep_probabilities = probabilities
        self.rows = _Axis.between(grid.height, grid.scene_height)
        self.cols = _Axis.between(grid.width, grid.scene_width)
        self.next_row = first_row
        self._buffer: np.ndarray | None = None  # (K + 1, rows, width) float32: probs and valid
        self._buffer_start = 0

    def add(self, band: Band) -> None:
        """Take the next band of grid rows; hand on every scene row it completes."""
        if band.probabilities is None:
            raise ValueError("regridding needs bands with probabilities")
        probs = band.probabilities.astype(np.float32) / PROBABILITY_SCALE
        valid = (band.classes != NODATA_CLASS).astype(np.float32)
        block = np.concatenate([probs * valid, valid[None]], axis=0)
        if self._buffer is None:
            self._buffer, self._buffer_start = block, band.row_off
        else:
            if band.row_off != self._buffer_start + self._buffer.shape[1]:
                raise ValueError(
                    f"band at grid row {band.row_off} does not follow row "
                    f"{self._buffer_start + self._buffer.shape[1]}"
                )
            self._buffer = np.concatenate([self._buffer, block], axis=1)
        available = self._buffer_start + self._buffer.shape[1]
        done = available >= self.grid.height
        stop = self.next_row
        while stop < self.grid.scene_height and (done or self.rows.hi[stop] < available):
            stop += 1
        for start in range(self.next_row, stop, MAX_BAND_ROWS):
            self.sink(self._scene_band(start, min(start + MAX_BAND_ROWS, stop)))
        self.next_row = stop
        if stop < self.grid.scene_height:
            keep = min(int(self.rows.lo[stop]), available) - self._buffer_start
            if keep > 0:
                self._buffer = self._buffer[:, keep:]
                self._buffer_start += keep

    def _scene_band(self, start: int, stop: int) -> Band:
        assert self._buffer is not None
        k, buf, base = self.k, self._buffer, self._buffer_start
        lo, hi = self.rows.lo[start:stop] - base, self.rows.hi[start:stop] - base
        wy = self.rows.w[start:stop][None, :, None]
        c = self.cols
        wx = c.w[None, None, :]
        top = buf[:, lo][:, :, c.lo] * (1 - wx) + buf[:, lo][:, :, c.hi] * wx
        bottom = buf[:, hi][:, :, c.lo] * (1 - wx) + buf[:, hi][:, :, c.hi] * wx
        mixed = top * (1 - wy) + bottom * wy
        weight = mixed[k]
        ok = (weight > 1e-6) & self.validity(start, stop - start)
        sums = mixed[:k]
        classes = np.argmax(sums, axis=0).astype(np.uint8)
        safe_w = np.where(ok, weight, 1.0)
        best = np.take_along_axis(sums, classes[None].astype(np.intp), axis=0)[0] / safe_w
        confidence = np.clip(np.rint(best * 255.0), 1, 255).astype(np.uint8)
        probs = None
        if self.keep_probabilities:
            scaled = np.rint(np.clip(sums / safe_w, 0, 1) * PROBABILITY_SCALE).astype(np.uint8)
            probs = np.where(ok, scaled, NODATA_PROBABILITY)
        return Band(
            start,
            np.where(ok, classes, NODATA_CLASS),
            np.where(ok, confidence, NODATA_CONFIDENCE),
            probs,
        )


def first_grid_row(grid: ReadGrid, scene_row: int) -> int:
    """The first grid row that scene row ``scene_row`` (and every row below it) needs."""
    if not grid.resampled or scene_row >= grid.scene_height:
        return min(scene_row, grid.height)
    return int(_Axis.between(grid.height, grid.scene_height).lo[scene_row])
