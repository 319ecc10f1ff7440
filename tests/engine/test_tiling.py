import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.engine.tiling import layout_axis, make_grid, round_up
from geoseg.errors import ConfigError
from geoseg.types import PixelWindow


@given(
    length=st.integers(1, 3000),
    tile_mult=st.integers(1, 20),
    multiple=st.sampled_from([1, 16, 32]),
    overlap_frac=st.floats(0, 0.5),
)
@settings(max_examples=300, deadline=None)
def test_axis_layout_covers_scene_inside_bounds(length, tile_mult, multiple, overlap_frac):
    tile = tile_mult * multiple
    overlap = int(tile * overlap_frac)
    lay = layout_axis(length, tile, overlap, multiple)
    assert lay.size % multiple == 0
    assert lay.starts[0] == 0 and lay.blend_starts[0] == 0
    if length > tile:
        # every tile lies inside the scene and the last one ends exactly at its edge
        assert all(0 <= s and s + lay.size <= length for s in lay.starts)
        assert lay.starts[-1] + lay.size == length
    else:
        assert lay.starts == (0,) and lay.size == round_up(length, multiple)
    # blended parts tile the axis exactly once: consecutive "final" ranges are contiguous
    assert list(lay.starts) == sorted(set(lay.starts))
    for i in range(len(lay.starts) - 1):
        assert lay.starts[i] <= lay.blend_starts[i] < lay.final_until(i) <= lay.end(i)
        assert lay.final_until(i) == lay.blend_starts[i + 1]
        # the blended overlap never exceeds the requested overlap
        assert 0 <= lay.blend_overlap(i + 1) <= max(overlap, 0) + 0
    assert lay.final_until(len(lay.starts) - 1) == length


def test_regular_starts_and_shifted_last_tile():
    lay = layout_axis(1000, 512, 64)
    assert lay.starts == (0, 448, 488)
    assert lay.blend_starts == (0, 448, 896)
    assert [lay.blend_overlap(i) for i in range(3)] == [0, 64, 64]


def test_small_scene_gets_one_padded_tile():
    grid = make_grid(300, 70, 512, 64, multiple=32)
    assert len(grid) == 1
    tile = next(iter(grid))
    assert tile.read_window == PixelWindow(0, 0, 320, 96)
    assert tile.valid_window == PixelWindow(0, 0, 300, 70)


def test_grid_is_raster_ordered():
    grid = make_grid(1000, 1300, 256, 32)
    tiles = list(grid)
    assert [t.index for t in tiles] == list(range(len(grid)))
    assert [(t.row, t.col) for t in tiles] == sorted((t.row, t.col) for t in tiles)
    assert grid.shape[0] * grid.shape[1] == len(tiles)


def test_tile_size_rounded_to_model_stride():
    grid = make_grid(2000, 2000, 500, 64, multiple=32)
    assert grid.rows.size == 512


@pytest.mark.parametrize(
    ("tile", "overlap", "match"),
    [
        (256, 256, "smaller than the tile size"),
        (256, 300, "smaller"),
        (256, 129, "at most half"),
        (0, 0, "positive"),
        (256, -1, ">= 0"),
    ],
)
def test_invalid_settings_are_refused(tile, overlap, match):
    with pytest.raises(ConfigError, match=match):
        make_grid(1000, 1000, tile, overlap)
