import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely

from geoseg.errors import InputError
from geoseg.types import ClassTable
from geoseg.vector.gpkg import (
    GPKG_VERSION,
    FeatureBatch,
    layer_names,
    read_layer_styles,
    write_geopackage,
)
from geoseg.vector.vectorize import vectorize
from tests.vector.test_vectorize import class_raster, noisy_classes

VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
TABLE = ClassTable.from_list(
    [
        {"id": 0, "name": "building", "color": "#3c1098"},
        {"id": 1, "name": "land", "color": "#8429f6"},
        {"id": 2, "name": "road", "color": "#6ec1e4"},
    ]
)


def batch(class_ids: list[int], start: float = 0.0) -> FeatureBatch:
    boxes = [shapely.box(start + i, 0, start + i + 1, 2) for i in range(len(class_ids))]
    return FeatureBatch(
        np.asarray(class_ids, dtype=np.int64),
        shapely.to_wkb(np.asarray(boxes, dtype=object)),
        np.full(len(class_ids), 2.0),
        np.full(len(class_ids), 6.0),
    )


def write(path: Path, batches: list[FeatureBatch], *, multi: bool = False) -> dict[str, int]:
    spool = path.parent / "spool"
    spool.mkdir(exist_ok=True)
    return write_geopackage(
        path, iter(batches), classes=TABLE, crs="EPSG:32633", multi=multi, spool_dir=spool
    )


def test_layer_names_are_safe_and_unique():
    table = ClassTable.from_list(
        [
            {"id": 0, "name": "water body"},
            {"id": 1, "name": "landcover"},
            {"id": 2, "name": "gpkg_things"},
            {"id": 3, "name": "2nd"},
            {"id": 4, "name": "Water-Body"},
            {"id": 5, "name": "???"},
        ]
    )
    assert layer_names(table) == {
        0: "water_body",
        1: "class_1_landcover",
        2: "class_2_gpkg_things",
        3: "class_2nd",
        4: "class_4_Water_Body",
        5: "class_5",
    }


def test_layers_fields_and_counts(tmp_path):
    path = tmp_path / "out.gpkg"
    counts = write(path, [batch([0, 1, 1]), batch([], 10), batch([1, 0, 1, 1], 20)])
    assert counts == {"landcover": 7, "building": 2, "land": 5, "road": 0}
    assert pyogrio.list_layers(path)[:, 0].tolist() == [
        "landcover",
        "building",
        "land",
        "road",
        "layer_styles",
    ]
    combined = pyogrio.read_dataframe(path, layer="landcover")
    assert combined.columns.tolist() == [
        "class_id",
        "class_name",
        "area_m2",
        "perimeter_m",
        "geometry",
    ]
    assert (
        combined["class_name"].tolist()
        == ["building", "land", "land", "land", "building"] + ["land"] * 2
    )
    land = pyogrio.read_dataframe(path, layer="land")
    assert land.columns.tolist() == ["area_m2", "perimeter_m", "geometry"]
    assert len(land) == 5 and land.crs.to_epsg() == 32633
    info = pyogrio.read_info(path, layer="road")
    assert info["features"] == 0 and info["geometry_type"] == "Polygon"


def test_geopackage_version_spatial_index_and_styles(tmp_path):
    path = tmp_path / "out.gpkg"
    write(path, [batch([0, 1, 2, 2])], multi=True)
    assert pyogrio.read_info(path, layer="landcover")["geometry_type"] == "MultiPolygon"
    with sqlite3.connect(path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        (application,) = db.execute("PRAGMA application_id").fetchone()
        indexed = db.execute(
            "SELECT table_name FROM gpkg_extensions WHERE extension_name = 'gpkg_rtree_index'"
        ).fetchall()
        rtree_rows = {
            name: db.execute(f'SELECT count(*) FROM "rtree_{name}_geom"').fetchone()[0]
            for name in ("landcover", "building", "land", "road")
        }
        styles = db.execute(
            "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
            "useAsDefault FROM layer_styles ORDER BY id"
        ).fetchall()
    assert version == 10300 and GPKG_VERSION == "1.3"
    assert application == 0x47504B47  # "GPKG"
    assert {t for (t,) in indexed} == {"landcover", "building", "land", "road"}
    assert rtree_rows == {"landcover": 4, "building": 1, "land": 1, "road": 2}
    # one default style per layer, each naming its own table
    assert styles == [
        ("", "", name, "geom", 1) for name in ("landcover", "building", "land", "road")
    ]
    qml = read_layer_styles(path)
    root = ET.fromstring(qml["landcover"].split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "class_id"
    categories = [(c.get("value"), c.get("label")) for c in renderer.iter("category")]
    assert categories == [("0", "building"), ("1", "land"), ("2", "road")]
    assert 'value="132,41,246,255"' in qml["landcover"]
    assert 'value="110,193,228,255"' in qml["road"] and 'type="singleSymbol"' in qml["road"]


def test_errors_from_the_feature_stream_are_kept(tmp_path):
    def failing():
        yield batch([0])
        raise InputError("pixel values [7] are not in the class table")

    spool = tmp_path / "spool"
    spool.mkdir()
    with pytest.raises(InputError, match="pixel values"):
        write_geopackage(
            tmp_path / "o.gpkg", failing(), classes=TABLE, crs=None, multi=False, spool_dir=spool
        )


@pytest.fixture
def vectorized(tmp_path) -> Path:
    data = noisy_classes(50, 60, n=3, seed=21)
    names = ["building", "land", "road"]
    src = class_raster(tmp_path / "classes.tif", data, names=names, colormap=TABLE.colormap())
    return vectorize(src, tmp_path / "classes.gpkg", block_size=16).path


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="Debian gdal-bin (ogrinfo) missing")
def test_gdal_36_reads_it_without_warnings(vectorized):
    run = subprocess.run(
        ["ogrinfo", "-so", "-al", str(vectorized)], capture_output=True, text=True, check=True
    )
    assert "partially supported" not in run.stderr
    assert "Warning" not in run.stderr and "ERROR" not in run.stderr
    assert run.stdout.count("Layer name:") == 5


@pytest.mark.skipif(not VALIDATOR.exists(), reason="GDAL's validate_gpkg.py (python3-gdal) missing")
def test_gdal_validator_accepts_it(vectorized):
    run = subprocess.run(
        ["/usr/bin/python3", str(VALIDATOR), str(vectorized)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
