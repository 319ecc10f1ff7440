"""Adding geoseg's outputs to a QGIS project, styled, in one layer-tree group per run.

The styles are geoseg's own: ``classes.qml`` next to ``classes.tif`` (QGIS loads it as the
raster's default style) and the GeoPackage's ``layer_styles`` table (QGIS loads each layer's
default style from it). Runs on the main thread (``postProcessAlgorithm``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from qgis.core import QgsRasterLayer, QgsVectorLayer

PER_CLASS_GROUP = "layers by class"


def add_outputs(
    project: Any,
    *,
    title: str,
    folder: Path | None = None,
    gpkg: Path | None = None,
    feedback: Any = None,
) -> list[Any]:
    """Add a run's outputs (``folder``) or a GeoPackage's layers to ``project``; the layers.

    Top to bottom in the group ``title``: the ``landcover`` polygons, the per-class layers (a
    sub-group, switched off), ``classes`` and ``confidence`` (switched off).
    """
    group = project.layerTreeRoot().insertGroup(0, title)
    layers: list[Any] = []
    if folder is not None:
        gpkg = folder / "classes.gpkg" if (folder / "classes.gpkg").is_file() else None
    if gpkg is not None:
        layers += _add_geopackage(project, group, gpkg, feedback)
    if folder is not None:
        for name, visible in (("classes", True), ("confidence", False)):
            layer = _raster(folder / f"{name}.tif", name, feedback)
            if layer is not None:
                project.addMapLayer(layer, False)
                group.addLayer(layer).setItemVisibilityChecked(visible)
                layers.append(layer)
    return layers


def feature_tables(gpkg: Path) -> list[str]:
    """The feature tables of a GeoPackage, in the order they were written (landcover first)."""
    uri = Path(gpkg).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute(
            "SELECT table_name FROM gpkg_contents WHERE data_type = 'features' ORDER BY rowid"
        ).fetchall()
    return [str(row[0]) for row in rows]


def _add_geopackage(project: Any, group: Any, gpkg: Path, feedback: Any) -> list[Any]:
    layers = []
    per_class = None
    for name in feature_tables(gpkg):
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        if not layer.isValid():
            _report(feedback, f"QGIS cannot open layer {name} of {gpkg}")
            continue
        project.addMapLayer(layer, False)
        if name == "landcover":
            group.insertLayer(0, layer)
        else:
            if per_class is None:
                per_class = group.addGroup(PER_CLASS_GROUP)
                per_class.setItemVisibilityChecked(False)
                per_class.setExpanded(False)
            per_class.addLayer(layer)
        layers.append(layer)
    return layers


def _raster(path: Path, name: str, feedback: Any) -> Any | None:
    if not path.is_file():
        return None
    layer = QgsRasterLayer(str(path), name, "gdal")
    if not layer.isValid():
        _report(feedback, f"QGIS cannot open {path}")
        return None
    style = path.with_suffix(".qml")
    renderer = layer.renderer()
    if style.is_file() and (renderer is None or renderer.type() != "paletted"):
        layer.loadNamedStyle(str(style))  # where loading default styles is switched off
    return layer


def _report(feedback: Any, message: str) -> None:
    if feedback is not None:
        feedback.reportError(message)
