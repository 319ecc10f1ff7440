import numpy as np
import pytest
import shapely
from rasterio.features import shapes
from shapely.geometry import shape

from geoseg.vector.coverage import (
    OUTSIDE,
    assemble,
    corner_cuts,
    cut_corners,
    drop_collinear,
    explode,
    insert_nodes,
    insert_points_on_lines,
    polygons_from_shapes,
)


def test_polygons_from_shapes_matches_shapely_shape():
    data = np.zeros((8, 9), dtype=np.uint8)
    data[1:6, 1:7] = 1
    data[2:4, 2:4] = 2  # a hole in class 1
    data[7, 8] = 3
    features = list(shapes(data))
    polygons, values = polygons_from_shapes(iter(features))
    expected = [shape(geometry) for geometry, _ in features]
    assert values.tolist() == [int(v) for _, v in features]
    assert all(
        shapely.equals_exact(p, e, tolerance=0) for p, e in zip(polygons, expected, strict=True)
    )
    empty, no_values = polygons_from_shapes(iter([]))
    assert len(empty) == 0 and len(no_values) == 0


def test_explode_and_assemble_round_trip():
    with_hole = shapely.Polygon(
        [(0, 0), (0, 4), (4, 4), (4, 0)], holes=[[(1, 1), (2, 1), (2, 2), (1, 2)]]
    )
    multi = shapely.MultiPolygon([shapely.box(5, 5, 6, 6), shapely.box(6, 6, 7, 7)])
    rings = explode(np.array([with_hole, multi], dtype=object))
    assert rings.lengths.tolist() == [4, 4, 4, 4]  # closing vertices dropped
    assert rings.part_geom.tolist() == [0, 1, 1]
    back = assemble(rings, multi=True)
    assert shapely.equals(back[0], with_hole) and shapely.equals(back[1], multi)
    with pytest.raises(ValueError, match="multi=True"):
        assemble(rings, multi=False)


def test_drop_collinear_keeps_corners_only():
    # starts mid-edge, has a repeated vertex and collinear runs on several sides
    ring = [(1, 0), (2, 0), (2, 0), (3, 0), (3, 1), (3, 2), (0, 2), (0, 1), (0, 0)]
    polygon = shapely.Polygon(ring)
    cleaned = assemble(drop_collinear(explode(np.array([polygon]))), multi=False)[0]
    assert shapely.get_num_coordinates(cleaned) == 5
    assert shapely.equals(cleaned, shapely.box(0, 0, 3, 2))


def test_cut_corners_keeps_two_neighbours_exactly_matched():
    # an L-shaped polygon and the square filling its notch share two edges and one corner
    notch = shapely.box(1, 1, 2, 2)
    ell = shapely.Polygon([(0, 0), (0, 2), (1, 2), (1, 1), (2, 1), (2, 0)])
    rings = explode(np.array([ell, notch], dtype=object))
    cut = np.all(rings.xy == [1, 1], axis=1)  # the corner only these two polygons share
    smoothed = assemble(cut_corners(rings, cut), multi=False)
    assert shapely.is_valid(smoothed).all()
    assert shapely.area(smoothed).tolist() == [3.125, 0.875]
    assert shapely.intersection(*smoothed).area == 0
    assert shapely.union_all(smoothed).equals(shapely.box(0, 0, 2, 2))


def test_insert_nodes_restores_t_junctions():
    top = shapely.box(0, 0, 2, 1)  # its lower edge runs straight past (1, 1)
    left, right = shapely.box(0, 1, 1, 2), shapely.box(1, 1, 2, 2)
    coverage = np.array([top, left, right], dtype=object)
    assert not shapely.coverage_is_valid(coverage)
    noded = assemble(insert_nodes(explode(coverage)), multi=False)
    assert shapely.get_num_coordinates(noded).tolist() == [6, 5, 5]
    assert shapely.coverage_is_valid(noded)
    assert all(shapely.equals(a, b) for a, b in zip(noded, coverage, strict=True))


def test_insert_points_on_lines_densifies_only_those_lines():
    polygon = shapely.box(0, 0, 4, 3)
    rings = insert_points_on_lines(
        explode(np.array([polygon])), xs=np.array([4.0]), ys=np.array([7.0])
    )
    xy = rings.xy
    assert len(xy) == 4 + 2  # the side x = 4 gains (4, 1) and (4, 2)
    assert {(4.0, 1.0), (4.0, 2.0)} <= set(map(tuple, xy))


def test_corner_cuts_marks_corners_shared_by_two_regions():
    pixels = np.full((5, 5), OUTSIDE, dtype=np.int32)
    pixels[1:4, 1:4] = [[0, 0, 0], [0, 1, 0], [0, 0, 2]]
    cut = corner_cuts(pixels)
    assert cut.shape == (4, 4)
    # the lone pixel 1 at block (1, 1): its corners (1, 1), (1, 2), (2, 1) are 3-1 corners,
    # its corner (2, 2) touches 0, 1 and 2 (a node) and is kept
    assert cut[1, 1] and cut[1, 2] and cut[2, 1]
    assert not cut[2, 2]
    assert not cut[0, :].any() and not cut[:, 0].any()  # the raster frame is never cut
