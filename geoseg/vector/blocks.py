"""The block grid of a raster, and running work over blocks in order, optionally in processes.

Blocks are visited in row-major order, so that work that must see its neighbours (merging
polygons across block borders, joining regions) can finish one block row at a time.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geoseg.types import PixelWindow

BlockMap = Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]
"""``map(fn, items)`` over blocks, results in order."""


def block_windows(height: int, width: int, block_size: int) -> list[PixelWindow]:
    """Row-major blocks of ``block_size`` pixels covering a raster without overlap."""
    return [
        PixelWindow(r, c, min(block_size, height - r), min(block_size, width - c))
        for r in range(0, height, block_size)
        for c in range(0, width, block_size)
    ]


def facing_pairs(
    ids: NDArray[np.int64],
    klass: NDArray[np.int64],
    other: NDArray[np.int64],
    other_class: NDArray[np.int64],
    start: int,
    connectivity: int,
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Pieces that face each other across a block border, and whether they share their class.

    ``ids[k]`` (class ``klass[k]``) faces ``other[start + k]``; with 8-connectivity also
    ``other[start + k ± 1]``. Negative ids mark no piece. Returns the ``(n, 2)`` facing id pairs
    (direct neighbours first, then the diagonals) and a mask of the pairs of the same class.
    """
    k = np.arange(len(ids))
    pairs, same = [], []
    for d in [0, -1, 1] if connectivity == 8 else [0]:
        j = start + k + d
        ok = (j >= 0) & (j < len(other))
        a, b = ids[k[ok]], other[j[ok]]
        valid = (a >= 0) & (b >= 0)
        pairs.append(np.column_stack([a[valid], b[valid]]))
        same.append(klass[k[ok]][valid] == other_class[j[ok]][valid])
    return np.concatenate(pairs), np.concatenate(same)


@contextmanager
def block_map(workers: int) -> Iterator[BlockMap]:
    """A ``map`` over blocks returning results in order, with ``workers`` processes.

    At most ``2 * workers`` blocks are in flight, so results never pile up in memory.
    """
    if workers <= 1:
        yield _serial_map
        return
    # fork starts workers at once and shares the imported modules; macOS and Windows spawn.
    linux = sys.platform.startswith("linux")
    context = multiprocessing.get_context("fork" if linux else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        # Start the workers now, before any output file or GDAL thread exists in this process.
        pool.submit(int).result()
        yield functools.partial(_ordered_map, pool, 2 * workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _serial_map(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
    return map(fn, items)


def _ordered_map(
    pool: ProcessPoolExecutor, ahead: int, fn: Callable[[Any], Any], items: list[Any]
) -> Iterator[Any]:
    pending: deque[Future[Any]] = deque()
    remaining = iter(items)
    for item in remaining:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.popleft().result()
        following = next(remaining, None)
        if following is not None:
            pending.append(pool.submit(fn, following))
        yield result
