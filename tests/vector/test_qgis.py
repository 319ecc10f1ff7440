"""QGIS styles: the documents themselves, and what QGIS 3.22 makes of them (PyQGIS).

PyQGIS comes with Debian's ``python3-qgis`` for the system Python (``/usr/bin/python3``), not
for the Python that runs these tests, so QGIS runs in a subprocess, headless.
"""

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest

from geoseg.types import ClassTable
from geoseg.vector.gpkg import layer_names
from geoseg.vector.qgis import (
    categorized_polygon_qml,
    paletted_raster_qml,
    raster_style_path,
    single_polygon_qml,
    write_raster_style,
)
from geoseg.vector.vectorize import vectorize
from tests.vector.test_vectorize import class_raster, noisy_classes

SYSTEM_PYTHON = "/usr/bin/python3"
TABLE = ClassTable.from_list(
    [
        {"id": 0, "name": "building", "color": "#3c1098"},
        {"id": 1, "name": "land", "color": "#8429f6"},
        {"id": 2, "name": "water body", "color": "#e2a929"},
        {"id": 3, "name": "unlabeled", "color": "#9b9b9b"},
    ]
)


def parse(qml: str) -> ET.Element:
    assert qml.startswith("<!DOCTYPE qgis")
    return ET.fromstring(qml.split("\n", 1)[1])


def test_categorized_qml_lists_every_class():
    root = parse(categorized_polygon_qml(TABLE))
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("attr") == "class_id"
    categories = {c.get("symbol"): (c.get("value"), c.get("label")) for c in root.iter("category")}
    colours = {
        s.get("name"): o.get("value")
        for s in root.iter("symbol")
        for o in s.iter("Option")
        if o.get("name") == "color"
    }
    assert {categories[k]: colours[k] for k in categories} == {
        ("0", "building"): "60,16,152,255",
        ("1", "land"): "132,41,246,255",
        ("2", "water body"): "226,169,41,255",
        ("3", "unlabeled"): "155,155,155,255",
    }


def test_single_symbol_qml_uses_the_class_colour():
    root = parse(single_polygon_qml(TABLE.by_id(2)))
    assert root.find("renderer-v2").get("type") == "singleSymbol"
    props = {p.get("k"): p.get("v") for p in root.iter("prop")}
    assert props["color"] == "226,169,41,255" and props["style"] == "solid"


def test_paletted_raster_qml_and_sidecar(tmp_path):
    root = parse(paletted_raster_qml(TABLE))
    entries = [(e.get("value"), e.get("color"), e.get("label")) for e in root.iter("paletteEntry")]
    assert entries == [
        ("0", "#3c1098", "building"),
        ("1", "#8429f6", "land"),
        ("2", "#e2a929", "water body"),
        ("3", "#9b9b9b", "unlabeled"),
    ]
    raster = tmp_path / "classes.tif"
    assert (
        write_raster_style(raster, TABLE) == raster_style_path(raster) == tmp_path / "classes.qml"
    )
    assert (tmp_path / "classes.qml").read_text() == paletted_raster_qml(TABLE)


def pyqgis_available() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import qgis.core"],
        capture_output=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        timeout=120,
    )
    return probe.returncode == 0


QGIS_SCRIPT = r"""
import json, os, sys
from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer

QgsApplication.setPrefixPath("/usr", True)
app = QgsApplication([], False)
app.initQgis()
gpkg, raster, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report = {"layers": {}}
for name in names:
    layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
    renderer = layer.renderer()
    entry = {"valid": layer.isValid(), "features": layer.featureCount(),
             "renderer": renderer.type() if renderer else None}
    if entry["renderer"] == "categorizedSymbol":
        entry["field"] = renderer.classAttribute()
        entry["categories"] = [[str(c.value()), c.label(), c.symbol().color().name()]
                               for c in renderer.categories()]
    elif entry["renderer"] == "singleSymbol":
        entry["color"] = renderer.symbol().color().name()
    report["layers"][name] = entry
layer = QgsRasterLayer(raster, "classes")
renderer = layer.renderer()
report["raster"] = {"valid": layer.isValid(), "renderer": renderer.type(),
                    "classes": [[int(c.value), c.label, c.color.name()] for c in renderer.classes()]
                    if renderer.type() == "paletted" else []}
print("REPORT" + json.dumps(report))
sys.stdout.flush()
os._exit(0)  # exitQgis() with layers alive crashes some PyQGIS builds on the way out
"""


@pytest.mark.qgis
@pytest.mark.skipif(not pyqgis_available(), reason="PyQGIS (Debian python3-qgis) not importable")
def test_qgis_opens_every_layer_styled(tmp_path):
    data = noisy_classes(40, 50, n=4, seed=31)
    raster = class_raster(
        tmp_path / "classes.tif",
        data,
        names=TABLE.names,
        colormap=TABLE.colormap(),
    )
    write_raster_style(raster, TABLE)
    result = vectorize(raster, tmp_path / "classes.gpkg", block_size=16)
    names = ["landcover", *layer_names(TABLE).values()]
    run = subprocess.run(
        [SYSTEM_PYTHON, "-c", QGIS_SCRIPT, str(result.path), str(raster), json.dumps(names)],
        capture_output=True,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        timeout=300,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT")]
    assert run.returncode == 0 and lines, run.stdout + run.stderr
    assert "partially supported" not in run.stderr
    report = json.loads(lines[-1][len("REPORT") :])
    layers = report["layers"]
    counts = pyogrio.read_dataframe(result.path, layer="landcover")["class_id"].value_counts()
    assert layers["landcover"] == {
        "valid": True,
        "features": result.polygons,
        "renderer": "categorizedSymbol",
        "field": "class_id",
        "categories": [[str(c.id), c.name, c.hex] for c in TABLE],
    }
    for info, name in zip(TABLE, layer_names(TABLE).values(), strict=True):
        assert layers[name] == {
            "valid": True,
            "features": int(counts.get(info.id, 0)),
            "renderer": "singleSymbol",
            "color": info.hex,
        }
    assert sum(layers[n]["features"] for n in names[1:]) == result.polygons
    assert report["raster"] == {
        "valid": True,
        "renderer": "paletted",
        "classes": [[c.id, c.name, c.hex] for c in TABLE],
    }
    assert np.isin(np.unique(data), [0, 1, 2, 3, 255]).all()
