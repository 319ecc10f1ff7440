import os

import numpy as np
import pytest

from geoseg.vector.blocks import block_map, block_windows


def test_blocks_cover_the_raster_once_in_row_major_order():
    windows = block_windows(10, 7, 4)
    covered = np.zeros((10, 7), dtype=int)
    for w in windows:
        covered[w.slices()] += 1
    assert (covered == 1).all()
    assert [(w.row_off, w.col_off, w.height, w.width) for w in windows] == [
        (0, 0, 4, 4), (0, 4, 4, 3), (4, 0, 4, 4), (4, 4, 4, 3), (8, 0, 2, 4), (8, 4, 2, 3),
    ]  # fmt: skip


def square_and_pid(value: int) -> tuple[int, int]:
    return value * value, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_block_map_keeps_the_order(workers):
    with block_map(workers) as map_blocks:
        results = list(map_blocks(square_and_pid, list(range(20))))
    assert [r for r, _ in results] == [i * i for i in range(20)]
    pids = {pid for _, pid in results}
    assert (pids == {os.getpid()}) == (workers == 1)


def fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("block 3 is broken")
    return value


def test_block_map_raises_worker_errors():
    with block_map(2) as map_blocks, pytest.raises(ValueError, match="block 3"):
        list(map_blocks(fail_on_three, list(range(8))))
