import numpy as np
import pytest
import shapely
from pyproj import CRS, Geod
from rasterio.transform import from_origin

from geoseg.vector.measure import GroundMeasure


def test_projected_metres_are_planar():
    measure = GroundMeasure(CRS.from_epsg(32633).to_wkt(), from_origin(0, 100, 2, 2), (50, 50))
    area, perimeter = measure.measure(np.array([shapely.box(0, 0, 10, 20)]))
    assert area.tolist() == [200.0] and perimeter.tolist() == [60.0]
    assert measure.row_pixel_areas(np.arange(3)).tolist() == [4.0, 4.0, 4.0]
    assert measure.pixel_size() == 2.0


def test_projected_feet_are_converted_to_metres():
    feet = 0.3048006096012192  # US survey foot
    measure = GroundMeasure(CRS.from_epsg(2263).to_wkt(), from_origin(0, 100, 1, 1), (10, 10))
    area, perimeter = measure.measure(np.array([shapely.box(0, 0, 100, 100)]))
    assert area[0] == pytest.approx(10_000 * feet**2)
    assert perimeter[0] == pytest.approx(400 * feet)


def test_geographic_areas_and_perimeters_on_the_ellipsoid():
    transform = from_origin(10.0, 46.0, 0.01, 0.01)
    measure = GroundMeasure(CRS.from_epsg(4326).to_wkt(), transform, (100, 100))
    cell = shapely.box(10.5, 45.5, 10.51, 45.51)
    ring = shapely.Polygon(
        shapely.box(10.2, 45.2, 10.8, 45.8).exterior,
        holes=[shapely.box(10.4, 45.4, 10.6, 45.6).exterior],
    )
    area, perimeter = measure.measure(np.array([cell, ring], dtype=object))
    geod = Geod(ellps="WGS84")
    assert area[0] == pytest.approx(abs(geod.geometry_area_perimeter(cell)[0]), rel=1e-6)
    outer = abs(geod.geometry_area_perimeter(shapely.box(10.2, 45.2, 10.8, 45.8))[0])
    inner = abs(geod.geometry_area_perimeter(shapely.box(10.4, 45.4, 10.6, 45.6))[0])
    # edges along parallels are not geodesics: a few metres² per km of edge apart
    assert area[1] == pytest.approx(outer - inner, rel=1e-4)
    edges = sum(geod.line_length(*r.xy) for r in (ring.exterior, *ring.interiors))
    assert perimeter[1] == pytest.approx(edges, rel=1e-12)


def test_geographic_pixels_shrink_towards_the_pole():
    transform = from_origin(0.0, 80.0, 1.0, 1.0)
    measure = GroundMeasure(CRS.from_epsg(4326).to_wkt(), transform, (80, 10))
    areas = measure.row_pixel_areas(np.arange(80))
    assert (np.diff(areas) > 0).all()  # rows go south, pixels grow
    geod = Geod(ellps="WGS84")
    first = abs(geod.geometry_area_perimeter(shapely.box(0, 79, 1, 80))[0])
    assert areas[0] == pytest.approx(first, rel=1e-4)
    # exact band areas: the 80 rows cover the zone between the equator and 80°N, 1° wide
    zone = 2 * np.pi * 6371007.18**2 * np.sin(np.radians(80)) / 360
    assert areas.sum() == pytest.approx(zone, rel=2e-3)  # sphere vs ellipsoid


def test_without_crs_units_are_the_rasters():
    measure = GroundMeasure(None, from_origin(0, 10, 1, 1), (10, 10))
    assert not measure.is_geographic and measure.unit_factor == 1.0
    area, perimeter = measure.measure(np.array([shapely.box(0, 0, 3, 3)]))
    assert area.tolist() == [9.0] and perimeter.tolist() == [12.0]
    assert measure.measure(np.array([], dtype=object))[0].size == 0
