"""QGIS styles (QML documents) that colour and name land-cover classes.

Three documents, in the form QGIS 3.22 (the Debian/Ubuntu long-term release) writes itself:

- :func:`categorized_polygon_qml`: a fill per class on the ``class_id`` field (combined layer);
- :func:`single_polygon_qml`: one fill in a class colour (the per-class layers);
- :func:`paletted_raster_qml`: a paletted renderer for a class raster, written as a ``.qml``
  sidecar (QGIS loads ``classes.qml`` by itself when it opens ``classes.tif``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from geoseg.errors import OutputError
from geoseg.types import RGB, ClassInfo, ClassTable

QGIS_VERSION = "3.22.0-Białowieża"
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
_OUTLINE_WIDTH_MM = "0.1"


def categorized_polygon_qml(classes: ClassTable, field: str = "class_id") -> str:
    """A categorized fill renderer: one category per class, valued by its id, labelled by name."""
    root = _qgis_root()
    renderer = ET.SubElement(root, "renderer-v2", _renderer_attrs("categorizedSymbol"))
    renderer.set("attr", field)
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, info in enumerate(classes):
        ET.SubElement(
            categories,
            "category",
            {
                "symbol": str(index),
                "value": str(info.id),
                "label": info.name,
                "render": "true",
            },
        )
        symbols.append(_fill_symbol(str(index), info.color))
    _finish_vector(root, renderer)
    return _serialise(root)


def single_polygon_qml(info: ClassInfo) -> str:
    """A single-symbol fill renderer in the colour of one class."""
    root = _qgis_root()
    renderer = ET.SubElement(root, "renderer-v2", _renderer_attrs("singleSymbol"))
    symbols = ET.SubElement(renderer, "symbols")
    symbols.append(_fill_symbol("0", info.color))
    _finish_vector(root, renderer)
    return _serialise(root)


def paletted_raster_qml(classes: ClassTable, band: int = 1) -> str:
    """A paletted raster renderer listing every class value with its colour and name."""
    root = _qgis_root()
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        {
            "enabled": "false",
            "maxOversampling": "2",
            "zoomedInResamplingMethod": "nearestNeighbour",
            "zoomedOutResamplingMethod": "nearestNeighbour",
        },
    )
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {
            "type": "paletted",
            "band": str(band),
            "opacity": "1",
            "alphaBand": "-1",
            "nodataColor": "",
        },
    )
    ET.SubElement(renderer, "rasterTransparency")
    origin = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (
        ("limits", "None"),
        ("extent", "WholeRaster"),
        ("statAccuracy", "Estimated"),
        ("cumulativeCutLower", "0.02"),
        ("cumulativeCutUpper", "0.98"),
        ("stdDevFactor", "2"),
    ):
        ET.SubElement(origin, tag).text = text
    palette = ET.SubElement(renderer, "colorPalette")
    for info in classes:
        ET.SubElement(
            palette,
            "paletteEntry",
            {
                "value": str(info.id),
                "color": info.hex,
                "alpha": "255",
                "label": info.name,
            },
        )
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(
        pipe,
        "huesaturation",
        {
            "saturation": "0",
            "grayscaleMode": "0",
            "invertColors": "0",
            "colorizeOn": "0",
            "colorizeRed": "255",
            "colorizeGreen": "128",
            "colorizeBlue": "128",
            "colorizeStrength": "100",
        },
    )
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    return _serialise(root)


def raster_style_path(raster_path: str | Path) -> Path:
    """Where QGIS looks for a raster's default style: same name, ``.qml`` extension."""
    return Path(raster_path).with_suffix(".qml")


def write_raster_style(raster_path: str | Path, classes: ClassTable) -> Path:
    """Write the paletted ``.qml`` sidecar next to a class raster and return its path."""
    path = raster_style_path(raster_path)
    try:
        path.write_text(paletted_raster_qml(classes), encoding="utf-8")
    except OSError as exc:
        raise OutputError(
            f"cannot write the QGIS style {path}: {exc.strerror or exc}; check that the folder "
            "is writable"
        ) from exc
    return path


def _qgis_root() -> ET.Element:
    return ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})


def _renderer_attrs(kind: str) -> dict[str, str]:
    return {
        "type": kind,
        "forceraster": "0",
        "symbollevels": "0",
        "enableorderby": "0",
        "referencescale": "-1",
    }


def _finish_vector(root: ET.Element, renderer: ET.Element) -> None:
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygon


def _fill_symbol(name: str, color: RGB) -> ET.Element:
    symbol = ET.Element(
        "symbol",
        {
            "type": "fill",
            "name": name,
            "alpha": "1",
            "clip_to_extent": "1",
            "force_rhr": "0",
        },
    )
    layer = ET.SubElement(
        symbol,
        "layer",
        {
            "class": "SimpleFill",
            "enabled": "1",
            "locked": "0",
            "pass": "0",
        },
    )
    props = {
        "color": _rgba(color),
        "style": "solid",
        "outline_color": _rgba(_darker(color)),
        "outline_style": "solid",
        "outline_width": _OUTLINE_WIDTH_MM,
        "outline_width_unit": "MM",
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_unit": "MM",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
    }
    options = ET.SubElement(layer, "Option", {"type": "Map"})
    for key, value in props.items():
        ET.SubElement(options, "Option", {"type": "QString", "name": key, "value": value})
    # QGIS 3.22 reads the Option map; the older <prop> form keeps earlier releases working.
    for key, value in props.items():
        ET.SubElement(layer, "prop", {"k": key, "v": value})
    return symbol


def _rgba(color: RGB) -> str:
    return "{},{},{},255".format(*color)


def _darker(color: RGB) -> RGB:
    r, g, b = (int(round(c * 0.7)) for c in color)
    return (r, g, b)


def _serialise(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return _DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"
