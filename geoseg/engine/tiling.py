"""Pure arithmetic of the tile grid: where tiles start, how far they reach, where they blend.

No I/O and no torch. Along each axis tiles start every ``stride = tile - overlap`` pixels; the last
tile is shifted back so that it ends exactly at the scene edge (it stays inside the scene, so no
strip is skipped and nothing is read past the edge). A shifted last tile overlaps its neighbour by
more than ``overlap``; only the regular ``overlap`` is blended (``blend_start``), the rest is
context for the model. A scene shorter than a tile gets one tile, padded up to the model's output
stride.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from geoseg.errors import ConfigError
from geoseg.types import PixelWindow, Tile


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class AxisLayout:
    """Tiles along one axis of length ``length``.

    ``starts[i]`` is where tile ``i`` begins, ``size`` how long every tile is (it may exceed
    ``length`` only when one padded tile covers the whole axis), ``blend_starts[i]`` the first pixel
    from which tile ``i`` contributes to the output. Pixels before ``blend_starts[i + 1]`` are final
    once tile ``i`` is done.
    """

    length: int
    size: int
    overlap: int
    starts: tuple[int, ...]
    blend_starts: tuple[int, ...]

    def end(self, i: int) -> int:
        """One past the last in-scene pixel of tile ``i``."""
        return min(self.starts[i] + self.size, self.length)

    def final_until(self, i: int) -> int:
        """Pixels before this index are complete after tile ``i``."""
        return self.blend_starts[i + 1] if i + 1 < len(self.starts) else self.length

    def band_of(self, pixel: int) -> int:
        """The tile whose finished band ``[blend_starts[i], final_until(i))`` holds ``pixel``."""
        return bisect.bisect_right(self.blend_starts, pixel) - 1

    def blend_overlap(self, i: int) -> int:
        """Width of the blended band shared with the previous tile (0 for the first tile)."""
        return 0 if i == 0 else self.end(i - 1) - self.blend_starts[i]


def layout_axis(length: int, tile: int, overlap: int, multiple: int = 1) -> AxisLayout:
    """Lay out tiles along one axis; ``tile`` must be a multiple of ``multiple``."""
    if length < 1:
        raise ConfigError(f"cannot tile an axis of length {length}")
    if tile % multiple:
        raise ConfigError(f"tile size {tile} is not a multiple of the model stride {multiple}")
    if 2 * overlap > tile:
        raise ConfigError(f"overlap {overlap} must be at most half the tile size {tile}")
    if length <= tile:
        return AxisLayout(length, round_up(length, multiple), overlap, (0,), (0,))
    stride = tile - overlap
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(min(starts[-1] + stride, length - tile))
    blend = [0] + [max(s, prev + stride) for prev, s in zip(starts, starts[1:], strict=False)]
    return AxisLayout(length, tile, overlap, tuple(starts), tuple(blend))


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a ``height x width`` scene, in raster order (row by row)."""

    rows: AxisLayout
    cols: AxisLayout

    @property
    def height(self) -> int:
        """Scene height in pixels."""
        return self.rows.length

    @property
    def width(self) -> int:
        """Scene width in pixels."""
        return self.cols.length

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return (len(self.rows.starts), len(self.cols.starts))

    def __len__(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def tile(self, row: int, col: int) -> Tile:
        """The tile at grid position ``(row, col)``."""
        r0, c0 = self.rows.starts[row], self.cols.starts[col]
        read = PixelWindow(r0, c0, self.rows.size, self.cols.size)
        valid = PixelWindow(r0, c0, self.rows.end(row) - r0, self.cols.end(col) - c0)
        return Tile(row * len(self.cols.starts) + col, row, col, read, valid)

    def __iter__(self) -> Iterator[Tile]:
        for row in range(len(self.rows.starts)):
            for col in range(len(self.cols.starts)):
                yield self.tile(row, col)


def make_grid(
    height: int, width: int, tile_size: int, overlap: int, *, multiple: int = 1
) -> TileGrid:
    """Tile grid for a scene; ``tile_size`` is rounded up to the model's output stride."""
    if tile_size < 1:
        raise ConfigError(f"tile size must be positive, got {tile_size}")
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, got {overlap}")
    if overlap >= tile_size:
        raise ConfigError(
            f"overlap ({overlap} px) must be smaller than the tile size ({tile_size} px); "
            "lower --overlap or raise --tile-size"
        )
    tile = round_up(tile_size, multiple)
    if 2 * overlap > tile:
        raise ConfigError(
            f"overlap ({overlap} px) must be at most half the tile size ({tile} px); "
            "lower --overlap or raise --tile-size"
        )
    return TileGrid(
        layout_axis(height, tile, overlap, multiple), layout_axis(width, tile, overlap, multiple)
    )
