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
