"""Class raster -> polygons in a QGIS-ready GeoPackage, at any scene size.

The public entry point is :func:`vectorize`. The raster is polygonized block by block and the
polygons crossing block borders are merged (:mod:`geoseg.vector.polygonize`), so memory does not
grow with the raster and the result equals that of the whole raster at once. Options, in order of
application: ``min_area`` (a sieve on the raster, :mod:`geoseg.vector.sieve`), ``smooth`` (chamfered
pixel corners, :func:`geoseg.vector.coverage.cut_corners`), ``simplify`` (GEOS coverage
simplification of all polygons together, so shared borders are simplified once and no gap or overlap
appears; this step holds the polygons, not the raster, in memory). Features are written by
:mod:`geoseg.vector.gpkg` with their ground area and perimeter (:mod:`geoseg.vector.measure`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from rasterio.errors import RasterioIOError

from geoseg.errors import (
    ConfigError,
    InputError,
    NotARasterError,
    OutputError,
    OutputExistsError,
    SceneNotFoundError,
    UngeoreferencedWarning,
    warn,
)
from geoseg.types import ClassInfo, ClassTable, PixelWindow, default_color
from geoseg.vector.blocks import BlockMap, block_map, block_windows
from geoseg.vector.coverage import Geoms, assemble, explode, insert_nodes
from geoseg.vector.gpkg import FeatureBatch, write_geopackage
from geoseg.vector.measure import GroundMeasure
from geoseg.vector.polygonize import (
    EMIT_CHUNK,
    Finisher,
    PixelPolygons,
    PolygonizeJob,
    polygon_stream,
)
from geoseg.vector.sieve import SieveStats, sieve

DEFAULT_BLOCK_SIZE = 2048
CLASS_NAMES_TAG = "class_names"
"""Band metadata key of ``classes.tif``: a JSON list of class names indexed by class id."""

_T = TypeVar("_T")
_POLYGONIZE_DTYPES = {"uint8", "int8", "uint16", "int16", "int32"}


@dataclass(frozen=True)
class VectorizeResult:
    """What :func:`vectorize` wrote.

    Attributes:
        path: the GeoPackage.
        layers: feature count per layer, ``landcover`` first, then one layer per class.
        classes: the class table used for names, colours and layers.
        polygons: number of polygons (features of ``landcover``).
        timings: seconds per step (``sieve``, ``polygons`` including writing ``landcover``,
            ``total``).
        sieve: what the ``min_area`` sieve changed, or ``None`` without ``min_area``.
    """

    path: Path
    layers: dict[str, int]
    classes: ClassTable
    polygons: int
    timings: dict[str, float] = field(default_factory=dict)
    sieve: SieveStats | None = None


def vectorize(
    classes_path: str | Path,
    out_path: str | Path,
    *,
    classes: ClassTable | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    smooth: bool = False,
    connectivity: int = 4,
    block_size: int = DEFAULT_BLOCK_SIZE,
    workers: int = 1,
    overwrite: bool = False,
) -> VectorizeResult:
    """Vectorize a class raster into a styled GeoPackage (one layer per class + ``landcover``).

    Args:
        classes_path: single-band integer class raster (``classes.tif``: uint8, nodata 255).
        out_path: GeoPackage to write (``.gpkg``); written under a temporary name, then renamed.
        classes: class names and colours; ``None`` reads them from the raster (band tag
            ``class_names`` and colour table), falling back to ``class_<id>`` names.
        min_area: regions smaller than this (m²) are absorbed into their largest neighbour in
            the raster first (a sieve), so the coverage keeps no holes.
        simplify: coverage simplification tolerance in metres (0: none).
        smooth: chamfer the pixel staircase (45° cuts inside one pixel), keeping the coverage
            valid.
        connectivity: 4 (default) or 8; 8-connected regions are written as valid multipolygons.
        block_size: block side in pixels; memory grows with its square, not with the raster.
        workers: processes polygonizing blocks in parallel.
        overwrite: replace an existing ``out_path``.

    Raises:
        OutputExistsError: ``out_path`` exists and ``overwrite`` is false.
        InputError: the raster is missing, not a single-band integer raster, or holds values
            that the class table does not name.
        ConfigError: an option is out of range.
    """
    started = time.perf_counter()
    _check_options(min_area, simplify, connectivity, block_size, workers)
    src = Path(classes_path)
    out = Path(out_path)
    info = _inspect(src)
    if info.crs_wkt is None:
        warn(
            f"{src} has no CRS: polygons keep the raster's own coordinates and "
            "area_m2/perimeter_m are in its units",
            UngeoreferencedWarning,
            stacklevel=2,
        )
    table = classes if classes is not None else read_class_table(src)
    _check_output(out, overwrite)
    measure = GroundMeasure(info.crs_wkt, info.transform, (info.height, info.width))
    plan = _Plan(
        src=src,
        info=info,
        table=table,
        measure=measure,
        blocks=block_windows(info.height, info.width, block_size),
        finish=Finisher(info.transform, measure, connectivity == 8),
        connectivity=connectivity,
        smooth=smooth,
        min_area=min_area,
        simplify=simplify,
        workers=workers,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        layers, sieve_stats, timings = _write_vectors(plan, tmp / out.name, tmp)
        _move_into_place(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    timings["total"] = time.perf_counter() - started
    polygons = next(iter(layers.values()))
    return VectorizeResult(out, layers, table, polygons, timings, sieve_stats)


@dataclass(frozen=True)
class _Plan:
    """One :func:`vectorize` call, checked: the raster, its classes, its blocks and the options."""

    src: Path
    info: _RasterInfo
    table: ClassTable
    measure: GroundMeasure
    blocks: list[PixelWindow]
    finish: Finisher
    connectivity: int
    smooth: bool
    min_area: float
    simplify: float
    workers: int


def _write_vectors(
    plan: _Plan, tmp_out: Path, tmp: Path
) -> tuple[dict[str, int], SieveStats | None, dict[str, float]]:
    """Sieve (with ``min_area``), polygonize and write the GeoPackage ``tmp_out``.

    Returns:
        Feature count per layer, the sieve's statistics (``None`` without ``min_area``) and the
        seconds of each step (``sieve``, ``polygons``). Scratch files go to ``tmp``.
    """
    timings: dict[str, float] = {}
    sieve_stats: SieveStats | None = None
    with ExitStack() as pool:
        map_blocks = pool.enter_context(block_map(plan.workers))
        source = plan.src
        if plan.min_area > 0:
            t = time.perf_counter()
            sieved = tmp / "sieved.tif"
            sieve_stats = sieve(
                plan.src,
                sieved,
                min_area=plan.min_area,
                connectivity=plan.connectivity,
                blocks=plan.blocks,
                measure=plan.measure,
                map_blocks=map_blocks,
            )
            if sieve_stats.pixels_changed:
                source = sieved
            timings["sieve"] = time.perf_counter() - t
        t = time.perf_counter()
        # The workers are done once the last block is polygonized: let them go before the
        # per-class layers are written rather than idle (and hold memory) until the end.
        batches = _feature_batches(plan, source, map_blocks, release_workers=pool.close)
        layers = write_geopackage(
            tmp_out,
            batches,
            classes=plan.table,
            crs=plan.info.crs_out,
            multi=plan.finish.multi,
            spool_dir=tmp,
        )
        timings["polygons"] = time.perf_counter() - t
    return layers, sieve_stats, timings


def _feature_batches(
    plan: _Plan, source: Path, map_blocks: BlockMap, *, release_workers: Callable[[], None]
) -> Iterable[FeatureBatch]:
    """The features of ``source`` block by block, coverage-simplified together with ``simplify``.

    ``release_workers`` is called once the last block is polygonized.
    """
    jobs = [
        PolygonizeJob(
            str(source),
            w,
            (plan.info.height, plan.info.width),
            plan.info.nodata,
            plan.connectivity,
            plan.smooth,
            frozenset(c.id for c in plan.table),
            None if plan.simplify > 0 else plan.finish,
        )
        for w in plan.blocks
    ]
    stream = polygon_stream(jobs, map_blocks, plan.src, plan.table, plan.connectivity, plan.smooth)
    stream = _then(stream, release_workers)
    if plan.simplify > 0:
        tolerance = plan.simplify / plan.measure.pixel_size()
        return _simplified(stream, tolerance, plan.finish)
    return (b for b in stream if isinstance(b, FeatureBatch))


def _move_into_place(tmp_out: Path, out: Path) -> None:
    """Rename the finished GeoPackage to ``out`` (replacing it: ``overwrite`` was checked)."""
    try:
        os.replace(tmp_out, out)
    except OSError as exc:
        raise OutputError(f"cannot move the finished GeoPackage to {out}: {exc}") from exc


def read_class_table(path: str | Path) -> ClassTable:
    """Class names and colours stored in a class raster.

    Names come from the band tag ``class_names`` (a JSON list indexed by class id, as geoseg
    writes it), colours from the colour table. Without names, the classes are the values present
    in the raster (one read pass), named ``class_<id>``.
    """
    path = Path(path)
    _inspect(path)
    with rasterio.open(path) as ds:
        text = ds.tags(1).get(CLASS_NAMES_TAG) or ds.tags().get(CLASS_NAMES_TAG)
        try:
            colormap: dict[int, tuple[int, ...]] | None = dict(ds.colormap(1))
        except ValueError:
            colormap = None
        nodata = ds.nodata

    def color(class_id: int) -> tuple[int, int, int]:
        if colormap is not None and class_id in colormap:
            r, g, b = colormap[class_id][:3]
            return (int(r), int(g), int(b))
        return default_color(class_id)

    if text:
        try:
            names = json.loads(text)
            if not isinstance(names, list):
                raise ValueError("not a list")
        except ValueError as exc:
            raise InputError(
                f"{path}: band tag {CLASS_NAMES_TAG!r} is not a JSON list of names ({exc}); "
                "pass --classes with a YAML class table instead"
            ) from exc
        infos = [ClassInfo(i, str(n), color(i)) for i, n in enumerate(names) if n is not None]
        return ClassTable(tuple(infos))
    values = _values_present(path, None if nodata is None else int(nodata))
    return ClassTable(tuple(ClassInfo(v, f"class_{v}", color(v)) for v in values))


def load_class_table(path: str | Path) -> ClassTable:
    """A class table from YAML: ``[{id: 0, name: building, color: "#3c1098"}, ...]``.

    A mapping with a ``classes`` key holding that list is accepted too.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the class table {path}: {exc}") from exc
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ConfigError(
            f"{path} must hold a list of classes like [{{id: 0, name: building, "
            f"color: '#3c1098'}}, ...], got {type(data).__name__}"
        )
    return ClassTable.from_list(data)


@dataclass(frozen=True)
class _RasterInfo:
    height: int
    width: int
    nodata: int | None
    transform: Affine
    crs_wkt: str | None
    crs_out: str | None


def _then(items: Iterable[_T], done: Callable[[], None]) -> Iterator[_T]:
    yield from items
    done()


def _inspect(path: Path) -> _RasterInfo:
    if not path.exists():
        raise SceneNotFoundError(f"class raster {path} does not exist; check the path")
    try:
        with rasterio.open(path) as ds:
            if ds.count != 1:
                raise InputError(
                    f"{path} has {ds.count} bands; a class raster has one band of class ids "
                    "(geoseg writes it as classes.tif)"
                )
            dtype = ds.dtypes[0]
            if dtype not in _POLYGONIZE_DTYPES:
                raise InputError(
                    f"{path} holds {dtype} values; class ids must be integers "
                    f"({', '.join(sorted(_POLYGONIZE_DTYPES))})"
                )
            crs = ds.crs
            epsg = crs.to_epsg() if crs is not None else None
            crs_out = f"EPSG:{epsg}" if epsg else (crs.to_wkt() if crs is not None else None)
            return _RasterInfo(
                ds.height,
                ds.width,
                None if ds.nodata is None else int(ds.nodata),
                ds.transform,
                crs.to_wkt() if crs is not None else None,
                crs_out,
            )
    except RasterioIOError as exc:
        raise NotARasterError(f"{path} cannot be read as a raster: {exc}") from exc


def _check_options(
    min_area: float, simplify: float, connectivity: int, block_size: int, workers: int
) -> None:
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    if not (np.isfinite(min_area) and min_area >= 0):
        raise ConfigError(f"min_area must be a non-negative area in m², got {min_area}")
    if not (np.isfinite(simplify) and simplify >= 0):
        raise ConfigError(f"simplify must be a non-negative tolerance in metres, got {simplify}")
    if block_size < 2:
        raise ConfigError(f"block_size must be at least 2 pixels, got {block_size}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")


def _check_output(out: Path, overwrite: bool) -> None:
    if out.suffix.lower() != ".gpkg":
        raise ConfigError(f"output {out} must be a GeoPackage file ending in .gpkg")
    if out.is_dir():
        raise OutputError(f"output {out} is a folder; give a .gpkg file path")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {out.parent}: {exc}") from exc


def _values_present(path: Path, nodata: int | None) -> list[int]:
    seen: set[int] = set()
    with rasterio.open(path) as ds:
        for w in block_windows(ds.height, ds.width, DEFAULT_BLOCK_SIZE):
            seen.update(np.unique(ds.read(1, window=w.to_rasterio())).tolist())
    seen.discard(nodata)  # type: ignore[arg-type]
    return sorted(seen)


def _simplified(
    stream: Iterator[FeatureBatch | PixelPolygons], tolerance: float, finish: Finisher
) -> Iterator[FeatureBatch]:
    """Coverage-simplify all polygons together (tolerance in pixels), then finish them."""
    geoms_parts: list[Geoms] = []
    class_parts: list[NDArray[np.int64]] = []
    for item in stream:
        assert not isinstance(item, FeatureBatch)
        geoms_parts.append(item[0])
        class_parts.append(item[1])
    if not geoms_parts:
        return
    geoms = np.concatenate(geoms_parts)
    klass = np.concatenate(class_parts)
    del geoms_parts, class_parts
    if len(geoms) == 0:
        return
    # GDAL leaves out vertices where a neighbour's border meets a straight edge ("T" nodes);
    # coverage simplification needs neighbours to share identical segments.
    geoms = assemble(insert_nodes(explode(geoms)), multi=finish.multi)
    # The coverage's outer boundary (raster frame, nodata) stays exact: only borders between
    # two polygons are simplified, so the polygons still cover exactly the valid pixels.
    simplified = shapely.coverage_simplify(geoms, tolerance, simplify_boundary=False)
    geoms = np.asarray(simplified, dtype=object)
    for start in range(0, len(geoms), EMIT_CHUNK):
        chunk = slice(start, start + EMIT_CHUNK)
        yield finish(geoms[chunk], klass[chunk])
