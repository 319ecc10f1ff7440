import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import Geod
from rasterio.features import rasterize
from rasterio.transform import from_origin

from geoseg.errors import ConfigError, InputError, OutputExistsError, UngeoreferencedWarning
from geoseg.types import ClassTable
from geoseg.vector.vectorize import load_class_table, read_class_table, vectorize
from tests.conftest import DATA, write_raster

NODATA = 255
TRANSFORM = from_origin(500000.0, 5300000.0, 10.0, 10.0)


def class_raster(
    path: Path,
    data: np.ndarray,
    *,
    names: list[str] | None = None,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    crs: str | None = "EPSG:32633",
    transform=TRANSFORM,
    nodata: int | None = NODATA,
) -> Path:
    write_raster(path, data[None].astype(np.uint8), crs=crs, transform=transform, nodata=nodata)
    if names is not None or colormap is not None:
        with rasterio.open(path, "r+") as ds:
            if names is not None:
                ds.update_tags(1, class_names=json.dumps(names))
            if colormap is not None:
                ds.write_colormap(1, colormap)
    return path


def noisy_classes(
    height: int, width: int, n: int = 4, seed: int = 0, holes: bool = True, salt: float = 0.04
):
    """Blobs of ``n`` classes with salt noise, diagonal touches and (optionally) nodata."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, height // 6 + 2, width // 6 + 2))
    fields = coarse.repeat(6, axis=1).repeat(6, axis=2)[:, :height, :width]
    data = fields.argmax(0).astype(np.uint8)
    noise = rng.random((height, width)) < salt
    data[noise] = rng.integers(0, n, noise.sum())
    data[2:4, 2:4] = [[1, 0], [0, 1]]  # a checkerboard: diagonal touches of two classes
    if holes:
        data[height // 2 : height // 2 + 3, 5 : width // 2] = NODATA
        data[0, -3:] = NODATA
    return data


def read_layer(path: Path, layer: str = "landcover"):
    return pyogrio.read_dataframe(path, layer=layer)


def burn(df, shape, transform=TRANSFORM) -> np.ndarray:
    shapes = zip(df.geometry.values, df["class_id"].astype(int), strict=True)
    return rasterize(shapes, out_shape=shape, transform=transform, fill=NODATA, dtype="uint8")


def canonical(df) -> list[tuple[int, bytes]]:
    geoms = shapely.normalize(df.geometry.values)
    return sorted(zip(df["class_id"].astype(int), shapely.to_wkb(geoms), strict=True))


def assert_clean_coverage(df, footprint_area: float | None = None) -> None:
    geoms = df.geometry.values
    assert shapely.is_valid(geoms).all(), shapely.is_valid_reason(geoms[~shapely.is_valid(geoms)])
    union = shapely.union_all(geoms)
    # no overlaps: the parts add up to their union
    assert df["area_m2"].sum() == pytest.approx(union.area, rel=1e-9)
    assert shapely.area(geoms) == pytest.approx(df["area_m2"].to_numpy(), rel=1e-9)
    if footprint_area is not None:
        assert union.area == pytest.approx(footprint_area, rel=1e-9)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("block_size", [2048, 16])
def test_round_trip_reproduces_the_raster(tmp_path, connectivity, block_size):
    data = noisy_classes(70, 90)
    src = class_raster(tmp_path / "classes.tif", data)
    result = vectorize(
        src,
        tmp_path / "out.gpkg",
        classes=ClassTable.default(4),
        connectivity=connectivity,
        block_size=block_size,
    )
    df = read_layer(result.path)
    np.testing.assert_array_equal(burn(df, data.shape), data)
    assert_clean_coverage(df, footprint_area=np.count_nonzero(data != NODATA) * 100.0)
    assert result.polygons == len(df)
    expected_type = "MultiPolygon" if connectivity == 8 else "Polygon"
    assert pyogrio.read_info(result.path, layer="landcover")["geometry_type"] == expected_type


@pytest.mark.parametrize(
    ("connectivity", "smooth", "block_size", "workers"),
    [(4, False, 7, 1), (4, False, 23, 2), (8, False, 9, 1), (4, True, 11, 1), (8, True, 16, 2)],
)
def test_blockwise_equals_whole_raster(tmp_path, connectivity, smooth, block_size, workers):
    data = noisy_classes(64, 80, seed=1)
    src = class_raster(tmp_path / "classes.tif", data)
    options = {"classes": ClassTable.default(4), "connectivity": connectivity, "smooth": smooth}
    whole = vectorize(src, tmp_path / "whole.gpkg", **options)
    blocks = vectorize(
        src, tmp_path / "blocks.gpkg", block_size=block_size, workers=workers, **options
    )
    assert whole.layers == blocks.layers
    a, b = read_layer(whole.path), read_layer(blocks.path)
    assert canonical(a) == canonical(b)  # same polygons, vertex for vertex
    np.testing.assert_array_equal(np.sort(a["area_m2"]), np.sort(b["area_m2"]))
    np.testing.assert_array_equal(np.sort(a["perimeter_m"]), np.sort(b["perimeter_m"]))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"simplify": 25.0},
        {"min_area": 300.0},
        {"min_area": 300.0, "simplify": 25.0, "block_size": 13},
        {"smooth": True},
        {"smooth": True, "simplify": 15.0},
        {"connectivity": 8, "simplify": 25.0, "min_area": 200.0},
    ],
)
def test_no_invalid_geometry_gap_or_overlap(tmp_path, options):
    data = noisy_classes(60, 72, seed=2, holes=False)
    src = class_raster(tmp_path / "classes.tif", data)
    result = vectorize(src, tmp_path / "out.gpkg", classes=ClassTable.default(4), **options)
    df = read_layer(result.path)
    raster_area = data.size * 100.0
    assert_clean_coverage(df, footprint_area=raster_area)
    union = shapely.union_all(df.geometry.values)
    frame = shapely.box(*rasterio.transform.array_bounds(60, 72, TRANSFORM))
    assert shapely.symmetric_difference(union, frame).area == pytest.approx(0.0, abs=1e-6)


def test_nodata_is_not_polygonized(tmp_path):
    data = noisy_classes(40, 50, seed=3)
    src = class_raster(tmp_path / "classes.tif", data)
    df = read_layer(vectorize(src, tmp_path / "o.gpkg", classes=ClassTable.default(4)).path)
    nodata_cells = [
        shapely.box(*rasterio.windows.bounds(((r, r + 1), (c, c + 1)), TRANSFORM))
        for r, c in np.argwhere(data == NODATA)
    ]
    overlap = shapely.intersection(
        shapely.union_all(df.geometry.values), shapely.union_all(nodata_cells)
    )
    assert overlap.area == pytest.approx(0.0, abs=1e-9)
    assert set(df["class_id"]) <= {0, 1, 2, 3}


def test_eight_connectivity_joins_diagonal_pixels_into_valid_multipolygons(tmp_path):
    data = np.zeros((6, 6), dtype=np.uint8)
    data[1, 1] = data[2, 2] = data[3, 3] = 1  # a diagonal chain of class 1
    data[4, 1] = 1
    src = class_raster(tmp_path / "classes.tif", data)
    four = read_layer(vectorize(src, tmp_path / "4.gpkg", classes=ClassTable.default(2)).path)
    eight = read_layer(
        vectorize(src, tmp_path / "8.gpkg", classes=ClassTable.default(2), connectivity=8).path
    )
    assert (four["class_id"] == 1).sum() == 4
    assert (eight["class_id"] == 1).sum() == 2
    chain = eight[eight["area_m2"] == 300.0].geometry.iloc[0]
    assert chain.geom_type == "MultiPolygon" and len(chain.geoms) == 3 and chain.is_valid
    assert shapely.is_valid(eight.geometry.values).all()


def test_min_area_absorbs_small_regions_into_their_neighbour(tmp_path):
    data = np.zeros((12, 12), dtype=np.uint8)
    data[2:4, 2:3] = 1  # 2 px island of class 1 in class 0
    data[8, 8] = 2  # 1 px island
    data[6:12, 0:6] = 3  # a large region of class 3 ...
    data[9, 2] = 2  # ... holding a 1 px island
    data[0:3, 9:12] = NODATA
    data[1, 11] = 2  # a 1 px island surrounded by nodata and the frame only
    src = class_raster(tmp_path / "classes.tif", data)
    result = vectorize(src, tmp_path / "out.gpkg", classes=ClassTable.default(4), min_area=250.0)
    df = read_layer(result.path)
    sieved = burn(df, data.shape)
    expected = data.copy()
    expected[2:4, 2:3] = 0
    expected[8, 8] = 0
    expected[9, 2] = 3
    np.testing.assert_array_equal(sieved, expected)
    assert result.sieve is not None and result.sieve.pixels_changed == 4
    kept = df["area_m2"] < 250.0
    assert df[kept]["class_id"].tolist() == [2]  # only the island without any larger neighbour
    assert_clean_coverage(df, footprint_area=np.count_nonzero(data != NODATA) * 100.0)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_min_area_does_not_depend_on_blocks(tmp_path, connectivity):
    data = noisy_classes(64, 70, seed=4)
    src = class_raster(tmp_path / "classes.tif", data)
    options = {"classes": ClassTable.default(4), "min_area": 600.0, "connectivity": connectivity}
    whole = read_layer(vectorize(src, tmp_path / "w.gpkg", **options).path)
    blocks = read_layer(
        vectorize(src, tmp_path / "b.gpkg", block_size=9, workers=2, **options).path
    )
    np.testing.assert_array_equal(burn(whole, data.shape), burn(blocks, data.shape))
    assert canonical(whole) == canonical(blocks)
    assert (burn(whole, data.shape) != data).any()


def test_simplify_drops_vertices_and_keeps_the_coverage(tmp_path):
    # Voronoi cells: straight borders at odd angles, i.e. long pixel staircases
    centres = np.random.default_rng(5).random((4, 2)) * 60
    rows, cols = np.mgrid[0:60, 0:60]
    distance = np.hypot(
        rows[None] - centres[:, 0, None, None], cols[None] - centres[:, 1, None, None]
    )
    data = distance.argmin(axis=0).astype(np.uint8)
    src = class_raster(tmp_path / "classes.tif", data)
    table = ClassTable.default(4)
    plain = read_layer(vectorize(src, tmp_path / "p.gpkg", classes=table).path)
    simple = read_layer(vectorize(src, tmp_path / "s.gpkg", classes=table, simplify=30.0).path)
    assert len(simple) == len(plain)
    vertices = shapely.get_num_coordinates
    assert vertices(simple.geometry.values).sum() < 0.2 * vertices(plain.geometry.values).sum()
    assert_clean_coverage(simple, footprint_area=data.size * 100.0)
    assert simple["area_m2"].sum() == pytest.approx(plain["area_m2"].sum())


def test_smooth_chamfers_corners_shared_by_two_polygons(tmp_path):
    data = np.zeros((7, 7), dtype=np.uint8)
    data[2:5, 2:5] = 1
    src = class_raster(tmp_path / "classes.tif", data)
    df = read_layer(
        vectorize(src, tmp_path / "o.gpkg", classes=ClassTable.default(2), smooth=True).path
    )
    square = df[df["class_id"] == 1].geometry.iloc[0]
    assert shapely.get_num_coordinates(square) == 9  # an octagon (closed ring)
    assert square.area == pytest.approx((9 - 4 * 0.125) * 100.0)
    frame = df[df["class_id"] == 0].geometry.iloc[0]
    assert shapely.equals(frame.interiors[0], square.exterior)
    assert frame.area == pytest.approx(49 * 100.0 - square.area)
    # the raster frame keeps its corners
    assert frame.exterior.envelope.area == pytest.approx(49 * 100.0)


def test_classes_come_from_the_raster_metadata(tmp_path):
    data = noisy_classes(30, 30, n=3, seed=6)
    colormap = {0: (60, 16, 152, 255), 1: (132, 41, 246, 255), 2: (226, 169, 41, 255)}
    names = ["building", "land", "water body"]
    src = class_raster(tmp_path / "classes.tif", data, names=names, colormap=colormap)
    table = read_class_table(src)
    assert table.names == names
    assert table.by_id(2).color == (226, 169, 41)
    result = vectorize(src, tmp_path / "o.gpkg")
    assert list(result.layers) == ["landcover", "building", "land", "water_body"]
    df = read_layer(result.path)
    assert set(df["class_name"]) == set(names)
    assert (df.groupby("class_id")["class_name"].first().to_dict()) == dict(enumerate(names))
    water = read_layer(result.path, "water_body")
    assert len(water) == (df["class_id"] == 2).sum()
    assert water["area_m2"].sum() == pytest.approx(df[df["class_id"] == 2]["area_m2"].sum())


def test_classes_without_metadata_are_named_by_value(tmp_path):
    data = np.array([[0, 0, 5], [5, 5, NODATA]], dtype=np.uint8)
    src = class_raster(tmp_path / "classes.tif", data)
    assert [(c.id, c.name) for c in read_class_table(src)] == [(0, "class_0"), (5, "class_5")]


def test_class_table_from_yaml(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- {id: 0, name: building, color: '#3c1098'}\n- {id: 1, name: water}\n")
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text("classes:\n  - {id: 3, name: road, color: [110, 193, 228]}\n")
    table = load_class_table(listed)
    assert table.names == ["building", "water"] and table.by_id(0).color == (60, 16, 152)
    assert load_class_table(keyed).by_id(3).color == (110, 193, 228)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: building\n")
    with pytest.raises(ConfigError, match="list of classes"):
        load_class_table(bad)


def test_values_missing_from_the_class_table_are_an_error(tmp_path):
    data = noisy_classes(20, 20, n=4, seed=7)
    src = class_raster(tmp_path / "classes.tif", data)
    out = tmp_path / "out" / "o.gpkg"
    with pytest.raises(InputError, match=r"pixel values \[3\].*--classes"):
        vectorize(src, out, classes=ClassTable.default(3), block_size=8)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary files left behind


def test_existing_output_needs_overwrite(tmp_path):
    src = class_raster(tmp_path / "classes.tif", noisy_classes(20, 20, seed=8))
    out = tmp_path / "o.gpkg"
    out.write_text("not a geopackage")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        vectorize(src, out, classes=ClassTable.default(4))
    vectorize(src, out, classes=ClassTable.default(4), overwrite=True)
    assert pyogrio.read_info(out, layer="landcover")["features"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "o.gpkg"]


def test_geographic_rasters_get_true_areas(tmp_path):
    data = noisy_classes(40, 50, seed=9, holes=False)
    transform = from_origin(12.0, 60.0, 0.001, 0.001)
    src = class_raster(tmp_path / "classes.tif", data, crs="EPSG:4326", transform=transform)
    df = read_layer(vectorize(src, tmp_path / "o.gpkg", classes=ClassTable.default(4)).path)
    geod = Geod(ellps="WGS84")
    cell_area = np.array(
        [abs(geod.geometry_area_perimeter(shapely.box(12.0, 60.0 - 0.001 * (r + 1), 12.001,
                                                      60.0 - 0.001 * r))[0]) for r in range(40)]
    )  # fmt: skip
    for class_id in range(4):
        pixels_per_row = (data == class_id).sum(axis=1)
        measured = df[df["class_id"] == class_id]["area_m2"].sum()
        assert measured == pytest.approx((pixels_per_row * cell_area).sum(), rel=1e-6)
    for geom, perimeter in zip(df.geometry, df["perimeter_m"], strict=True):
        rings = [geom.exterior, *geom.interiors]  # holes count towards the perimeter
        expected = sum(geod.line_length(*ring.xy) for ring in rings)
        assert perimeter == pytest.approx(expected, rel=1e-9)
    # a pixel here is 0.001° x 0.001° at 60°N: about 55.8 m x 111.4 m
    assert df["area_m2"].sum() / data.size == pytest.approx(6210, rel=0.01)


def test_projected_areas_are_planar_square_metres(tmp_path):
    data = noisy_classes(20, 30, seed=10, holes=False)
    src = class_raster(tmp_path / "classes.tif", data)
    df = read_layer(vectorize(src, tmp_path / "o.gpkg", classes=ClassTable.default(4)).path)
    assert df["area_m2"].to_numpy() == pytest.approx(shapely.area(df.geometry.values))
    assert df["perimeter_m"].to_numpy() == pytest.approx(shapely.length(df.geometry.values))
    assert df["area_m2"].sum() == pytest.approx(20 * 30 * 100.0)


def test_ungeoreferenced_raster_warns(tmp_path):
    src = class_raster(
        tmp_path / "c.tif",
        noisy_classes(10, 10, seed=11),
        crs=None,
        transform=from_origin(0, 10, 1, 1),
    )
    with pytest.warns(UngeoreferencedWarning, match="no CRS"):
        vectorize(src, tmp_path / "o.gpkg", classes=ClassTable.default(4))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"connectivity": 6}, "connectivity"),
        ({"min_area": -1.0}, "min_area"),
        ({"simplify": float("nan")}, "simplify"),
        ({"block_size": 1}, "block_size"),
        ({"workers": 0}, "workers"),
    ],
)
def test_options_are_checked(tmp_path, options, match):
    src = class_raster(tmp_path / "c.tif", noisy_classes(10, 10, seed=12))
    with pytest.raises(ConfigError, match=match):
        vectorize(src, tmp_path / "o.gpkg", **options)


def test_inputs_are_checked(tmp_path):
    src = class_raster(tmp_path / "c.tif", noisy_classes(10, 10, seed=13))
    with pytest.raises(ConfigError, match=r"\.gpkg"):
        vectorize(src, tmp_path / "o.shp", classes=ClassTable.default(4))
    rgb = write_raster(tmp_path / "rgb.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="3 bands"):
        vectorize(rgb, tmp_path / "o.gpkg")
    with pytest.raises(InputError, match="does not exist"):
        vectorize(tmp_path / "missing.tif", tmp_path / "o.gpkg")


def quantised_landsat(path: Path) -> tuple[Path, np.ndarray, object]:
    """A real-looking class raster: band 1 of RGB.byte.tif cut into 6 classes, collar as nodata."""
    with rasterio.open(DATA / "RGB.byte.tif") as ds:
        band = ds.read(1)
        profile = ds.profile
    valid = band > 0
    edges = np.quantile(band[valid], [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    classes = np.digitize(band, edges).astype(np.uint8)
    classes[~valid] = NODATA
    class_raster(path, classes, crs=profile["crs"].to_string(), transform=profile["transform"])
    return path, classes, profile["transform"]


def test_real_scene_round_trip_blockwise(tmp_path):
    src, classes, transform = quantised_landsat(tmp_path / "classes.tif")
    table = ClassTable.default(6)
    blocks = vectorize(src, tmp_path / "b.gpkg", classes=table, block_size=200, workers=2)
    df = read_layer(blocks.path)
    assert len(df) > 1000
    np.testing.assert_array_equal(burn(df, classes.shape, transform), classes)
    pixel_area = abs(transform.a * transform.e)
    assert_clean_coverage(df, footprint_area=np.count_nonzero(classes != NODATA) * pixel_area)
    whole = read_layer(vectorize(src, tmp_path / "w.gpkg", classes=table).path)
    assert canonical(whole) == canonical(df)


@pytest.mark.slow
def test_real_prediction_round_trip(tmp_path):
    import geoseg
    from tests.conftest import conv_model

    with rasterio.open(DATA / "RGB.byte.tif") as ds:
        window = rasterio.windows.Window(250, 250, 192, 160)
        crop = ds.read(window=window)
        transform = ds.window_transform(window)
    scene = write_raster(
        tmp_path / "scene.tif", crop, crs="EPSG:32618", transform=transform, nodata=0
    )
    result = geoseg.segment(scene, tmp_path / "run", model=conv_model(3, 4), overwrite=True)
    assert result.vector_path is not None
    with rasterio.open(result.classes_path) as ds:
        classes = ds.read(1)
        transform = ds.transform
    df = read_layer(result.vector_path)
    np.testing.assert_array_equal(burn(df, classes.shape, transform), classes)
    assert result.classes_path.with_suffix(".qml").exists()


def test_cli_vectorize(tmp_path):
    from geoseg.cli import main

    data = noisy_classes(30, 30, n=2, seed=14)
    src = class_raster(tmp_path / "classes.tif", data, names=["land", "water"])
    yaml = tmp_path / "classes.yaml"
    yaml.write_text("- {id: 0, name: bare}\n- {id: 1, name: lake, color: '#0000ff'}\n")
    out = tmp_path / "out.gpkg"
    runner = CliRunner()
    args = ["vectorize", str(src), "-o", str(out), "--classes", str(yaml), "--connectivity", "8"]
    ok = runner.invoke(main, [*args, "--block-size", "8", "--min-area", "200"])
    assert ok.exit_code == 0, ok.output
    assert "landcover" in ok.output
    assert set(pyogrio.list_layers(out)[:, 0]) >= {"landcover", "bare", "lake", "layer_styles"}
    again = runner.invoke(main, ["vectorize", str(src), "-o", str(out)])
    assert again.exit_code == 1
    assert "--overwrite" in again.output and "Traceback" not in again.output
