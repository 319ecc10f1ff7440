"""Writing land-cover polygons to a QGIS-ready GeoPackage.

Layout of the file:

- ``landcover``: every polygon, with ``class_id``, ``class_name``, ``area_m2``, ``perimeter_m``;
- one layer per class, named after the class (see :func:`layer_names`), with ``area_m2`` and
  ``perimeter_m``; every class of the table gets its layer, empty or not, so the file's layout
  does not depend on the scene;
- ``layer_styles``: one default QGIS style per layer (the table QGIS itself reads and writes),
  each row naming its own table, so that every layer opens coloured and labelled.

Features are streamed through Arrow (``pyogrio.write_arrow``) into the combined layer while their
batches arrive; the per-class rows are spooled to Arrow IPC files on disk and written after, so
memory stays bounded by one batch. Files are GeoPackage 1.3: the GDAL 3.6 inside QGIS 3.22 warns
that 1.4 files (newer GDAL's default) "may only be partially supported".
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geoseg.errors import OutputError
from geoseg.types import ClassTable
from geoseg.vector.qgis import categorized_polygon_qml, single_polygon_qml

COMBINED_LAYER = "landcover"
GEOMETRY_COLUMN = "geom"
GPKG_VERSION = "1.3"
STYLE_TABLE = "layer_styles"

_RESERVED = {COMBINED_LAYER, STYLE_TABLE, "sqlite_sequence"}


@dataclass(frozen=True)
class FeatureBatch:
    """Polygons ready to write: WKB in the output CRS and their attributes (all length ``n``)."""

    class_id: NDArray[np.int64]
    wkb: NDArray[Any]
    area_m2: NDArray[np.float64]
    perimeter_m: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.class_id)

    @staticmethod
    def concat(batches: list[FeatureBatch]) -> FeatureBatch:
        """All features of ``batches`` in order."""
        if not batches:
            return FeatureBatch(
                np.zeros(0, np.int64), np.empty(0, object), np.zeros(0), np.zeros(0)
            )
        return FeatureBatch(
            np.concatenate([b.class_id for b in batches]),
            np.concatenate([b.wkb for b in batches]),
            np.concatenate([b.area_m2 for b in batches]),
            np.concatenate([b.perimeter_m for b in batches]),
        )


def layer_names(classes: ClassTable) -> dict[int, str]:
    """The layer name of each class id: the class name made safe for SQL and GeoPackage.

    Letters, digits and underscores are kept, anything else becomes ``_``; names that would clash
    with ``landcover``, ``layer_styles``, GeoPackage's reserved ``gpkg_``/``rtree_`` prefixes or
    another class get a ``class_<id>_`` prefix.
    """
    names: dict[int, str] = {}
    taken = set(_RESERVED)
    for info in classes:
        name = re.sub(r"[^0-9A-Za-z_]+", "_", info.name).strip("_") or f"class_{info.id}"
        if name[0].isdigit():
            name = f"class_{name}"
        lowered = name.lower()
        if lowered in taken or lowered.startswith(("gpkg_", "rtree_", "sqlite_")):
            name = f"class_{info.id}_{name}"
        taken.add(name.lower())
        names[info.id] = name
    return names


def write_geopackage(
    path: Path,
    batches: Iterable[FeatureBatch],
    *,
    classes: ClassTable,
    crs: str | None,
    multi: bool,
    spool_dir: Path,
) -> dict[str, int]:
    """Write a new GeoPackage at ``path`` from a stream of feature batches.

    Args:
        path: file to create (must not exist).
        batches: features in output order; consumed once, lazily.
        classes: the legend; one layer and one style per class.
        crs: output CRS as ``EPSG:<code>`` or WKT, or ``None``.
        multi: write MultiPolygon layers (8-connectivity) instead of Polygon layers.
        spool_dir: existing folder for the per-class spool files (removed once written).

    Returns:
        Feature count per layer name, the combined layer first.
    """
    names = layer_names(classes)
    rows = _CombinedRows(batches, classes, names, spool_dir)
    geometry_type = "MultiPolygon" if multi else "Polygon"
    reader = rows.reader()
    try:
        with _fast_sqlite():
            _write_layer(reader, path, COMBINED_LAYER, geometry_type, crs, "all classes", True)
            _write_class_layers(path, rows, names, geometry_type, crs)
    except Exception as exc:
        if rows.failure:
            raise rows.failure[0] from None
        raise OutputError(f"cannot write {path}: {exc}") from exc
    if rows.failure:  # in case a reader error ever ends the stream quietly
        raise rows.failure[0]
    write_layer_styles(path, classes)
    counts = rows.counts
    return {COMBINED_LAYER: sum(counts.values()), **{names[c]: n for c, n in counts.items()}}


class _CombinedRows:
    """The combined layer's Arrow batches, each class's rows spooled to its own IPC file meanwhile.

    Counts the features of each class as they pass, and keeps the exception that ends the stream:
    GDAL pulls the batches through the Arrow C stream, which would reduce it to a message.
    """

    def __init__(
        self,
        batches: Iterable[FeatureBatch],
        classes: ClassTable,
        names: dict[int, str],
        spool_dir: Path,
    ) -> None:
        # pyarrow is imported in the functions, not at module level: block workers forked before
        # writing starts then stay free of pyarrow/pyogrio (and the pandas/geopandas that pyogrio
        # loads), about 100 MB each.
        import pyarrow as pa

        self._batches = batches
        self.class_name = {info.id: info.name for info in classes}
        self.counts = dict.fromkeys(names, 0)
        self.spools = {cid: spool_dir / f"class_{cid}.arrows" for cid in names}
        self.failure: list[BaseException] = []
        self.class_schema = pa.schema(
            [
                ("area_m2", pa.float64()),
                ("perimeter_m", pa.float64()),
                (GEOMETRY_COLUMN, pa.binary()),
            ]
        )
        self.schema = pa.schema(
            [("class_id", pa.int32()), ("class_name", pa.string()), *self.class_schema]
        )

    def reader(self) -> Any:
        """A ``pyarrow.RecordBatchReader`` over the combined layer's rows (consumed once)."""
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.schema, self._stream())

    def _stream(self) -> Iterator[Any]:
        """The combined rows batch by batch; each batch's rows go to the spool files after it."""
        import pyarrow as pa

        sinks = {
            cid: pa.ipc.new_stream(str(p), self.class_schema) for cid, p in self.spools.items()
        }
        try:
            for batch in self._batches:
                if not len(batch):
                    continue
                area = pa.array(batch.area_m2, type=pa.float64())
                perimeter = pa.array(batch.perimeter_m, type=pa.float64())
                geometry = pa.array(batch.wkb, type=pa.binary())
                label = pa.array(
                    [self.class_name[int(c)] for c in batch.class_id], type=pa.string()
                )
                yield pa.record_batch(
                    [pa.array(batch.class_id, type=pa.int32()), label, area, perimeter, geometry],
                    schema=self.schema,
                )
                self._spool(batch.class_id, [area, perimeter, geometry], sinks)
        except BaseException as exc:
            self.failure.append(exc)
            raise
        finally:
            for sink in sinks.values():
                sink.close()

    def _spool(
        self, class_id: NDArray[np.int64], columns: list[Any], sinks: dict[int, Any]
    ) -> None:
        """Append the rows of each class in ``class_id`` to that class's spool file."""
        import pyarrow as pa

        for cid in np.unique(class_id).tolist():
            index = pa.array(np.flatnonzero(class_id == cid))
            taken = [column.take(index) for column in columns]
            sinks[cid].write_batch(pa.record_batch(taken, schema=self.class_schema))
            self.counts[cid] += len(index)


def _write_class_layers(
    path: Path, rows: _CombinedRows, names: dict[int, str], geometry_type: str, crs: str | None
) -> None:
    """Write each class's spooled rows as its own layer, removing the spool file once written."""
    import pyarrow as pa

    for cid, name in names.items():
        with pa.ipc.open_stream(str(rows.spools[cid])) as spooled:
            _write_layer(spooled, path, name, geometry_type, crs, rows.class_name[cid], False)
        rows.spools[cid].unlink()


@contextmanager
def _fast_sqlite() -> Iterator[None]:
    """Skip SQLite's fsyncs while writing: the file is a temporary one, renamed when complete."""
    import pyogrio

    previous = pyogrio.get_gdal_config_option("OGR_SQLITE_SYNCHRONOUS")
    pyogrio.set_gdal_config_options({"OGR_SQLITE_SYNCHRONOUS": "OFF"})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_SQLITE_SYNCHRONOUS": previous})


def write_layer_styles(path: Path, classes: ClassTable) -> None:
    """Store a default QGIS style for the combined layer and every class layer.

    Each row names its own ``f_table_name`` (QGIS matches a layer's style on table name and
    geometry column); one shared row would leave all other layers unstyled or wrongly styled.
    """
    names = layer_names(classes)
    rows = [(COMBINED_LAYER, categorized_polygon_qml(classes), "land cover by class")]
    rows += [(names[i.id], single_polygon_qml(i), f"land cover: {i.name}") for i in classes]
    try:
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(_STYLE_TABLE_SQL)
            db.executemany(
                f"DELETE FROM {STYLE_TABLE} WHERE f_table_name = ?", [(r[0],) for r in rows]
            )
            db.executemany(
                f"INSERT INTO {STYLE_TABLE} (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, 'geoseg', NULL)",
                [(table, GEOMETRY_COLUMN, table, qml, text) for table, qml, text in rows],
            )
            # Registered like QGIS does, so GDAL and QGIS list it as a (non-spatial) table.
            db.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
                "description, last_change, srs_id) VALUES (?, 'attributes', ?, '', "
                "strftime('%Y-%m-%dT%H:%M:%fZ','now'), 0)",
                (STYLE_TABLE, STYLE_TABLE),
            )
    except sqlite3.Error as exc:
        raise OutputError(f"cannot write QGIS styles into {path}: {exc}") from exc


def _write_layer(
    stream: Any,
    path: Path,
    layer: str,
    geometry_type: str,
    crs: str | None,
    description: str,
    create: bool,
) -> None:
    import pyogrio

    pyogrio.write_arrow(
        stream,
        str(path),
        layer=layer,
        driver="GPKG",
        geometry_name=GEOMETRY_COLUMN,
        geometry_type=geometry_type,
        crs=crs,
        dataset_options={"VERSION": GPKG_VERSION} if create else None,
        layer_options={
            "SPATIAL_INDEX": "YES",
            "FID": "fid",
            "GEOMETRY_NAME": GEOMETRY_COLUMN,
            "IDENTIFIER": layer,
            "DESCRIPTION": description,
        },
    )


_STYLE_TABLE_SQL = f"""
CREATE TABLE IF NOT EXISTS {STYLE_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    f_table_catalog TEXT(256),
    f_table_schema TEXT(256),
    f_table_name TEXT(256),
    f_geometry_column TEXT(256),
    styleName TEXT(30),
    styleQML TEXT,
    styleSLD TEXT,
    useAsDefault BOOLEAN,
    description TEXT,
    owner TEXT(30),
    ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)
"""


def read_layer_styles(path: Path) -> dict[str, str]:
    """The default style QML of each table in a GeoPackage's ``layer_styles`` (for checks)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            f"SELECT f_table_name, styleQML FROM {STYLE_TABLE} WHERE useAsDefault"
        ).fetchall()
    return {str(name): str(qml) for name, qml in rows}


__all__ = [
    "COMBINED_LAYER",
    "GEOMETRY_COLUMN",
    "GPKG_VERSION",
    "FeatureBatch",
    "layer_names",
    "read_layer_styles",
    "write_geopackage",
    "write_layer_styles",
]
