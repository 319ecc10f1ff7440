import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.engine.stitch import NODATA_CLASS, Stitcher, axis_weights, ramp
from geoseg.engine.tiling import make_grid
from tests.conftest import ClassReference, assert_classes_agree, top_two_margin

#: The blend multiplies and adds float32 weights: a probability moves by a few ulps (< 1e-6)
#: relative to the field it came from, so only pixels that close to a tie may change class.
BLEND_MARGIN = 1e-6


def run_stitch(grid, full, valid_full=None, skip=frozenset(), probabilities=False):
    """Feed the stitcher each tile's crop of a whole-scene probability field."""
    k, h, w = full.shape
    valid_full = np.ones((h, w), bool) if valid_full is None else valid_full
    st_ = Stitcher(grid, k, probabilities=probabilities)
    classes = np.full((h, w), 77, np.uint8)
    conf = np.zeros((h, w), np.uint8)
    rows_seen = np.zeros(h, int)
    for tile in grid:
        rw, vw = tile.read_window, tile.valid_window
        p = np.zeros((k, rw.height, rw.width), np.float32)
        v = np.zeros(rw.shape, bool)
        rr, cc = vw.relative_to(rw).slices()
        p[:, rr, cc] = full[:, vw.row_off : vw.row_end, vw.col_off : vw.col_end]
        v[rr, cc] = valid_full[vw.row_off : vw.row_end, vw.col_off : vw.col_end]
        args = (None, None) if tile.index in skip else (p, v)
        for band in st_.add(tile, *args):
            sl = slice(band.row_off, band.row_off + band.height)
            classes[sl] = band.classes
            conf[sl] = band.confidence
            rows_seen[sl] += 1
    assert (rows_seen == 1).all(), "every output row is emitted exactly once"
    return classes, conf


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 64, 101])
def test_ramp_is_partition_of_unity(n):
    r = ramp(n)
    assert np.allclose(r + r[::-1], 1.0)
    assert (r[: n // 4] == 0).all() and np.all(np.diff(r) >= 0)


@given(
    length=st.integers(1, 2000),
    tile=st.sampled_from([32, 64, 96, 256, 512]),
    frac=st.floats(0, 0.5),
)
@settings(max_examples=200, deadline=None)
def test_summed_weights_positive_everywhere(length, tile, frac):
    overlap = int(tile * frac)
    grid = make_grid(length, 1, tile, overlap)
    lay = grid.rows
    total = np.zeros(length)
    for i, s in enumerate(lay.starts):
        w = axis_weights(lay, i)
        end = lay.end(i)
        total[s:end] += w[: end - s]
    assert (total > 0).all()
    assert np.allclose(total, 1.0)  # raised-cosine ramps sum to exactly one


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [
        (1000, 700, 256, 64),
        (300, 200, 512, 64),
        (513, 1025, 512, 64),
        (97, 1000, 64, 16),
        (1000, 1000, 128, 0),
        (65, 65, 64, 32),
    ],
)
def test_consistent_predictions_stitch_exactly(h, w, tile, overlap):
    rng = np.random.default_rng(1)
    full = rng.random((5, h, w)).astype(np.float32)
    full /= full.sum(0, keepdims=True)
    grid = make_grid(h, w, tile, overlap, multiple=32 if tile >= 128 else 1)
    classes, conf = run_stitch(grid, full)
    reference = ClassReference(full.argmax(0).astype(np.uint8), top_two_margin(full))
    assert_classes_agree(classes, reference, margin=BLEND_MARGIN)
    expected_conf = np.clip(np.rint(full.max(0) * 255), 1, 255)
    assert np.abs(conf.astype(int) - expected_conf).max() <= 1


def test_nodata_and_skipped_tiles_become_nodata():
    h, w = 300, 300
    full = np.random.default_rng(2).random((3, h, w)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[:, :150] = False  # left half nodata
    grid = make_grid(h, w, 64, 16)
    skip = {t.index for t in grid if t.valid_window.col_end <= 150}
    classes, conf = run_stitch(grid, full, valid, skip)
    assert (classes[:, :150] == NODATA_CLASS).all() and (conf[:, :150] == 0).all()
    expected = np.where(valid, full.argmax(0), NODATA_CLASS).astype(np.uint8)
    reference = ClassReference(expected, top_two_margin(full))
    assert_classes_agree(classes, reference, margin=BLEND_MARGIN)


def test_memory_in_flight_is_overlap_rows_not_scene():
    """The carried band holds `overlap` rows of the full width, whatever the scene height."""
    grid = make_grid(2000, 900, 256, 32)
    k = 4
    st_ = Stitcher(grid, k)
    biggest = 0
    for tile in grid:
        p = np.full((k, 256, 256), 0.25, np.float32)
        list(st_.add(tile, p, np.ones((256, 256), bool)))
        if st_._carry is not None:
            biggest = max(biggest, st_._carry.nbytes)
    assert biggest == (k + 2) * 32 * 900 * 4


def test_tiles_out_of_order_are_refused():
    grid = make_grid(200, 200, 64, 16)
    st_ = Stitcher(grid, 2)
    tiles = list(grid)
    with pytest.raises(ValueError, match="raster order"):
        list(st_.add(tiles[1], None, None))
