import numpy as np
import shapely
from rasterio.transform import from_origin

from geoseg.types import ClassTable
from geoseg.vector.blocks import block_windows
from geoseg.vector.polygonize import BorderMerger, PolygonizeJob, polygon_stream, polygonize_block
from tests.conftest import write_raster

NODATA = 255


def jobs_for(tmp_path, data, block, *, smooth=False, connectivity=4, known=(0, 1, 2)):
    path = write_raster(
        tmp_path / "c.tif", data[None], transform=from_origin(0, 100, 1, 1), nodata=NODATA
    )
    return [
        PolygonizeJob(
            str(path), w, data.shape, NODATA, connectivity, smooth, frozenset(known), None
        )
        for w in block_windows(*data.shape, block)
    ]


def test_polygons_touching_an_inner_border_become_pieces(tmp_path):
    data = np.zeros((4, 8), dtype=np.uint8)
    data[1:3, 1:7] = 1  # a bar across the border at x = 4
    data[3, 0] = 2  # inside the left block, touching the raster edge only
    left, right = (polygonize_block(job) for job in jobs_for(tmp_path, data, 4))
    final_geoms, final_class = left.done
    assert final_class.tolist() == [2]
    assert sorted(left.piece_class.tolist()) == [0, 0, 1]  # two background pieces reach it too
    ids, klass = left.strips["right"]
    assert klass.tolist() == [0, 1, 1, 0]
    bar = int(np.flatnonzero(left.piece_class == 1)[0])
    assert ids[1] == ids[2] == bar and ids[0] != bar
    assert set(left.strips) == {"right"} and set(right.strips) == {"left"}
    # pieces are densified along the border so that both sides share identical segments
    on_border = shapely.get_coordinates(left.pieces[bar])[:, 0] == 4
    assert on_border.sum() == 3  # (4, 1), (4, 2) added, (4, 3)


def test_groups_are_fused_once_the_row_below_is_done(tmp_path):
    data = np.zeros((8, 4), dtype=np.uint8)
    data[1:7, 1] = 1  # a column of class 1 across the border at y = 4
    top, bottom = (polygonize_block(job) for job in jobs_for(tmp_path, data, 4))
    merger = BorderMerger(8, 4, 4, smooth=False)
    assert merger.add(top) == []  # nothing completes within the first row
    assert merger.add(bottom) == []  # both groups of the first row reach the second
    (fused,) = list(merger.fuse(merger.finish()))
    geoms, klass = fused
    assert sorted(klass.tolist()) == [0, 1]
    column = geoms[klass.tolist().index(1)]
    assert shapely.equals(column, shapely.box(1, 1, 2, 7))
    assert shapely.get_num_coordinates(column) == 5  # no leftover vertices at the border


def test_stream_equals_the_whole_raster(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, (23, 29)).astype(np.uint8)
    table = ClassTable.default(3)

    def polygons(block):
        jobs = jobs_for(tmp_path, data, block)
        items = list(polygon_stream(jobs, lambda f, xs: map(f, xs), tmp_path, table, 4, False))
        geoms = np.concatenate([g for g, _ in items])
        klass = np.concatenate([k for _, k in items])
        return sorted(zip(klass.tolist(), shapely.to_wkb(shapely.normalize(geoms)), strict=True))

    assert polygons(5) == polygons(100)


def test_values_outside_the_table_are_reported(tmp_path):
    data = np.zeros((4, 4), dtype=np.uint8)
    data[0, 0] = 9
    (job,) = jobs_for(tmp_path, data, 8, known=(0,))
    assert polygonize_block(job).unknown == (9,)
