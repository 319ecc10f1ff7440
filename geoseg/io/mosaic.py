"""Several rasters that form one scene: a list of files (or a ``.txt`` list) as a GDAL VRT mosaic.

Part of the read step. Members are opened through :func:`geoseg.io.read.open_raster`, so each one
fails with the same clear errors as a single scene; they must share band count, data type, CRS,
nodata value and pixel grid (same resolution, offsets a whole number of pixels apart), which is
what lets the mosaic be read without resampling. The VRT XML is written here rather than by
``gdalbuildvrt``, which is not installed everywhere. Later files win where members overlap.
Where no member has a nodata value, a mask band built from the members' own masks marks the gaps
between them as invalid, so gaps never pass for real pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import rasterio
from rasterio.errors import RasterioIOError

from geoseg.errors import InputError, SceneNotFoundError
from geoseg.io.read import GDAL_TYPE_NAMES, SceneInfo, _gdal_path, open_raster, scene_info

#: colour interpretations a VRT band can carry by name (others travel as band descriptions).
_COLOR_NAMES = {"red": "Red", "green": "Green", "blue": "Blue", "gray": "Gray", "alpha": "Alpha"}
#: how far (in pixels) a member may sit off the mosaic's pixel grid.
GRID_TOLERANCE = 1e-3

Scene = str | Path | Sequence[str | Path]


def is_mosaic(scene: Scene) -> bool:
    """Whether ``scene`` names several files: a list/tuple of paths, or a ``.txt`` file list."""
    if isinstance(scene, str | Path):
        return str(scene).lower().endswith(".txt")
    return True


def list_members(scene: Scene) -> list[str]:
    """The member paths of a mosaic; a ``.txt`` list holds one per line (``#`` starts a comment).

    Relative paths in a list file are relative to the list file's folder.
    """
    if not isinstance(scene, str | Path):
        members = [str(m) for m in scene]
        if not members:
            raise InputError("the mosaic has no files; give at least one raster")
        return members
    listing = Path(scene)
    if not listing.is_file():
        raise SceneNotFoundError(f"{listing} does not exist; check the path of the file list")
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the file list {listing}: {exc}") from exc
    members = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.startswith(("/", "s3://", "http://", "https://")) or Path(text).is_absolute():
            members.append(text)
        else:
            members.append(str(listing.parent / text))
    if not members:
        raise InputError(
            f"the file list {listing} names no rasters; write one path per line (# for comments)"
        )
    return members


def label(members: Sequence[str]) -> str:
    """How messages name a mosaic: ``mosaic of 3 files (a.tif, b.tif, c.tif)``."""
    names = [Path(m).name for m in members[:3]] + (["..."] if len(members) > 3 else [])
    return f"mosaic of {len(members)} file(s) ({', '.join(names)})"


def build_vrt(members: Sequence[str]) -> tuple[str, SceneInfo]:
    """The VRT XML of a mosaic of ``members`` and the :class:`SceneInfo` it describes.

    Raises:
        InputError: a member is missing or unreadable, or the members do not share one grid.
    """
    infos = []
    for member in members:
        with open_raster(member) as ds:
            infos.append(scene_info(ds))
    first = infos[0]
    for info in infos[1:]:
        _check_compatible(first, info)
    if first.rotated:
        raise InputError(
            f"{first.path} has a rotated geotransform; mosaics need north-up files "
            "(gdalwarp them first)"
        )
    res_x, res_y = first.transform.a, first.transform.e
    lefts = [i.transform.c for i in infos]
    tops = [i.transform.f for i in infos]
    rights = [i.transform.c + i.width * res_x for i in infos]
    bottoms = [i.transform.f + i.height * res_y for i in infos]
    left, top = min(lefts), max(tops) if res_y < 0 else min(tops)
    right, bottom = max(rights), min(bottoms) if res_y < 0 else max(bottoms)
    width = round((right - left) / res_x)
    height = round((bottom - top) / res_y)
    offsets = []
    for info in infos:
        col = (info.transform.c - left) / res_x
        row = (info.transform.f - top) / res_y
        if abs(col - round(col)) > GRID_TOLERANCE or abs(row - round(row)) > GRID_TOLERANCE:
            raise InputError(
                f"{info.path} is not on the pixel grid of {first.path} (it is offset by "
                f"{col - math.floor(col):.3f}, {row - math.floor(row):.3f} px); align the files "
                "first, e.g. gdalwarp -tap -tr with the same resolution"
            )
        offsets.append((round(col), round(row)))

    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if first.crs:
        ET.SubElement(root, "SRS").text = first.crs.to_wkt()
    geo = (left, res_x, first.transform.b, top, first.transform.d, res_y)
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in geo)
    gdal_type = GDAL_TYPE_NAMES[first.dtype]
    nodata = first.nodata
    for band in range(1, first.count + 1):
        node = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(band))
        name = first.band_names[band - 1]
        if name.lower() in _COLOR_NAMES:
            ET.SubElement(node, "ColorInterp").text = _COLOR_NAMES[name.lower()]
        elif not name.startswith("band_"):
            ET.SubElement(node, "Description").text = name
        if nodata is not None:
            ET.SubElement(node, "NoDataValue").text = _number(nodata)
        for member, info, (col, row) in zip(members, infos, offsets, strict=True):
            _source(node, member, band, info, col, row, nodata)
    if nodata is None:
        mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        for member, info, (col, row) in zip(members, infos, offsets, strict=True):
            # 0 in a member's mask must not erase a valid pixel of an earlier, overlapping member
            _source(mask, member, "mask,1", info, col, row, 0)
    xml = ET.tostring(root, encoding="unicode")
    try:
        with rasterio.open(xml) as ds:  # GDAL opens VRT XML given in place of a file name
            mosaic = scene_info(ds)
    except RasterioIOError as exc:  # pragma: no cover - the XML above is always valid
        raise InputError(f"GDAL refused the mosaic of {label(members)}: {exc}") from exc
    return xml, replace(mosaic, path=label(members))


def write_vrt(xml: str, path: Path) -> Path:
    """Write a VRT built by :func:`build_vrt` (member paths inside it are absolute)."""
    path.write_text(xml, encoding="utf-8")
    return path


def _source(
    parent: ET.Element,
    member: str,
    band: int | str,
    info: SceneInfo,
    col: int,
    row: int,
    nodata: float | None,
) -> None:
    kind = "ComplexSource" if nodata is not None else "SimpleSource"
    source = ET.SubElement(parent, kind)
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = _absolute(member)
    ET.SubElement(source, "SourceBand").text = str(band)
    w, h = str(info.width), str(info.height)
    ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=w, ySize=h)
    ET.SubElement(source, "DstRect", xOff=str(col), yOff=str(row), xSize=w, ySize=h)
    if nodata is not None:
        ET.SubElement(source, "NODATA").text = _number(nodata)


def _absolute(member: str) -> str:
    gdal_path = _gdal_path(member)
    if gdal_path.startswith("/vsi"):
        return gdal_path
    return str(Path(member).resolve())


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def _check_compatible(first: SceneInfo, other: SceneInfo) -> None:
    problems: list[tuple[str, Any, Any]] = []
    if other.count != first.count:
        problems.append(("band count", first.count, other.count))
    if other.dtype != first.dtype:
        problems.append(("data type", first.dtype, other.dtype))
    if (other.crs or None) != (first.crs or None):
        problems.append(("CRS", first.crs, other.crs))
    if not _same_nodata(first.nodata, other.nodata):
        problems.append(("nodata value", first.nodata, other.nodata))
    fa, oa = first.transform, other.transform
    if not (math.isclose(fa.a, oa.a, rel_tol=1e-9) and math.isclose(fa.e, oa.e, rel_tol=1e-9)):
        problems.append(("pixel size", (fa.a, fa.e), (oa.a, oa.e)))
    if other.rotated:
        problems.append(("rotation", "none", (oa.b, oa.d)))
    if problems:
        what = "; ".join(f"{name} {a} vs {b}" for name, a, b in problems)
        raise InputError(
            f"{other.path} does not match {first.path} ({what}); the files of a mosaic must share "
            "bands, data type, CRS, nodata and pixel size (gdalwarp/gdal_translate them first)"
        )


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b
