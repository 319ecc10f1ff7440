"""``segment``: the one function composing read -> tile -> infer -> stitch -> write -> vectorize."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.config import InferenceConfig, RunConfig, load_config
from geoseg.engine.stitch import Band
from geoseg.engine.tiling import TileGrid
from geoseg.errors import (
    BandMismatchError,
    GeosegError,
    OutputError,
    OutputExistsError,
    ResolutionWarning,
    UngeoreferencedWarning,
)
from geoseg.model import ModelCard, SegmentationModel, load_default, load_model
from geoseg.types import ClassTable

if TYPE_CHECKING:
    from geoseg.engine.inference import Predictor
    from geoseg.engine.journal import PartialRun
    from geoseg.io.grid import ReadGrid
    from geoseg.io.read import SceneInfo

Log = Callable[[str], None]


@dataclass(frozen=True)
class SegmentResult:
    """What one ``segment`` call produced."""

    scene: str
    out_dir: Path
    classes_path: Path
    confidence_path: Path
    probabilities_path: Path | None
    preview_path: Path | None
    vector_path: Path | None
    classes: ClassTable
    device: str
    bands: tuple[int, ...]
    tile_size: int
    overlap: int
    tiles_total: int
    tiles_skipped: int
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def megapixels_per_second(self) -> float:
        """Scene megapixels divided by the whole run time."""
        return self.width * self.height / 1e6 / max(self.timings.get("total", 0.0), 1e-9)

    def summary(self) -> str:
        """Human-readable report of outputs and timings."""
        outputs = [self.classes_path, self.confidence_path, self.probabilities_path,
                   self.preview_path, self.vector_path]  # fmt: skip
        lines = [f"outputs in {self.out_dir}:"]
        lines += [f"  {p.name}" for p in outputs if p is not None]
        lines.append(
            f"tiles: {self.tiles_total} ({self.tiles_skipped} skipped as nodata), "
            f"tile {self.tile_size} px, overlap {self.overlap} px, bands {list(self.bands)}"
        )
        t = self.timings
        lines.append(
            "time: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
            + f" ({self.megapixels_per_second:.2f} Mpx/s)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "scene": self.scene,
            "out_dir": str(self.out_dir),
            "classes": str(self.classes_path),
            "confidence": str(self.confidence_path),
            "probabilities": str(self.probabilities_path) if self.probabilities_path else None,
            "preview": str(self.preview_path) if self.preview_path else None,
            "vector": str(self.vector_path) if self.vector_path else None,
            "class_table": self.classes.to_list(),
            "device": self.device,
            "bands": list(self.bands),
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "tiles_total": self.tiles_total,
            "tiles_skipped": self.tiles_skipped,
            "width": self.width,
            "height": self.height,
            "timings": self.timings,
        }


def default_out_dir(scene: str | Path | Sequence[str | Path]) -> Path:
    """``<scene>_geoseg/`` next to a local scene; in the current folder for a URL or GDAL path.

    A mosaic (a list of files) gets ``mosaic_geoseg/`` next to its first file.
    """
    from geoseg.engine.journal import is_remote

    if not isinstance(scene, str | Path):
        return Path(str(next(iter(scene)))).parent / "mosaic_geoseg"
    text = str(scene)
    if is_remote(text):
        name = PurePosixPath(text.split("?", 1)[0].rstrip("/")).stem or "scene"
        return Path.cwd() / f"{name}_geoseg"
    path = Path(text)
    return path.with_name(f"{path.stem}_geoseg")


def resolve_config(
    config: RunConfig | str | Path | None,
    *,
    model: str | Path | SegmentationModel | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    bands: Sequence[int] | None = None,
    probabilities: bool | None = None,
    vectorize: bool | None = None,
    preview: bool | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    tta: str | None = None,
    resolution: str | float | None = None,
) -> RunConfig:
    """Merge a config (object or YAML path) with explicit keyword overrides."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    return cfg.replace(
        top={"model": str(model) if isinstance(model, str | Path) else None, "bands": bands},
        tiling={"tile_size": tile_size, "overlap": overlap, "resolution": resolution},
        inference={"batch_size": batch_size, "device": device, "tta": tta},
        output={
            "probabilities": probabilities,
            "vectorize": vectorize,
            "preview": preview,
            "min_area": min_area,
            "simplify": simplify,
        },  # fmt: skip
    )


def segment(
    scene: str | Path | Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    model: str | Path | SegmentationModel | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    bands: Sequence[int] | None = None,
    overwrite: bool = False,
    probabilities: bool | None = None,
    vectorize: bool | None = None,
    preview: bool | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    allow_ungeoreferenced: bool = False,
    config: RunConfig | str | Path | None = None,
    progress: bool = False,
    log: Log | None = None,
    tta: str | None = None,
    engine: Engine | None = None,
    resume: bool = False,
    resolution: str | float | None = None,
) -> SegmentResult:
    """Segment a raster scene into land-cover classes and write georeferenced outputs.

    Writes ``classes.tif`` (uint8 COG, 255 = nodata, colour table), ``confidence.tif``,
    optionally ``probabilities.tif``, ``preview.png`` and ``classes.gpkg`` into ``out_dir``
    (default: ``<scene>_geoseg/`` next to the scene). Everything is written into a temporary
    folder that is renamed when complete; an existing ``out_dir`` is refused unless ``overwrite``.
    That folder, ``.<out_dir name>.partial``, keeps a journal of the rows already written: an
    interrupted run (Ctrl-C, a kill, a crash) continues from there with ``resume=True``.

    Args:
        scene: path (or GDAL path/URL such as ``/vsicurl/...``, ``s3://...``) of the input
            raster, or a list of paths that form one mosaic (see :mod:`geoseg.io.mosaic`).
        out_dir: output folder.
        model: checkpoint path, a loaded :class:`SegmentationModel`, or ``None`` for the default.
        tile_size: tile edge in pixels (default: the model's training tile size).
        overlap: pixels shared by neighbouring tiles.
        batch_size: tiles per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        bands: 1-based band indices to feed the model (default: matched by band names).
        overwrite: replace an existing output folder.
        probabilities: also write ``probabilities.tif`` (one band per class).
        vectorize: also write the GeoPackage.
        preview: also write ``preview.png``.
        min_area: vectorizing: regions smaller than this (m²) merge into their neighbours.
        simplify: vectorizing: coverage simplification tolerance (metres).
        allow_ungeoreferenced: accept rasters without CRS/geotransform (pixel coordinates).
        config: a :class:`RunConfig` or YAML path; keyword arguments override it.
        progress: show a progress bar.
        log: where to send status lines (default: nowhere).
        tta: test-time augmentation: ``none``, ``flips`` (4 passes) or ``d4`` (8 passes).
        engine: what turns tiles into bands (default :func:`local_engine`; see
            :func:`geoseg.distributed.segment_distributed` for the dask engine).
        resume: continue the interrupted run into ``out_dir`` (same scene, model and settings,
            else :class:`~geoseg.errors.ResumeError`); without it a stale partial run is replaced.
        resolution: the pixel size tiles are read at: ``auto`` (default: the model's own when
            the scene's lies outside the range the model was trained at), ``native`` (the
            scene's), or metres; outputs are always on the scene's own grid
            (see :mod:`geoseg.io.grid`).
    """
    import rasterio

    from geoseg.io import read as readmod

    t_start = time.perf_counter()
    say: Log = log or (lambda _msg: None)
    cfg = resolve_config(
        config, model=model, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        device=device, bands=bands, probabilities=probabilities, vectorize=vectorize,
        preview=preview, min_area=min_area, simplify=simplify, tta=tta, resolution=resolution,
    )  # fmt: skip

    from geoseg.io import grid, mosaic

    vrt_xml: str | None = None
    if mosaic.is_mosaic(scene):
        members = mosaic.list_members(scene)
        vrt_xml, info = mosaic.build_vrt(members)
    else:
        members = [str(scene)]
        with readmod.open_raster(str(scene)) as ds:
            info = readmod.scene_info(ds)
            alpha_band = readmod.alpha_data_band(ds)
            if alpha_band is not None:
                readmod.warn_alpha_data(ds, alpha_band)
    readmod.validate_scene(info, allow_ungeoreferenced=allow_ungeoreferenced)
    if not info.georeferenced:
        warnings.warn(
            f"{info.path} has no georeferencing; outputs carry pixel coordinates",
            UngeoreferencedWarning,
            stacklevel=2,
        )
    target = Path(out_dir) if out_dir is not None else default_out_dir(scene)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target} exists; pass --overwrite to replace it or -o another folder"
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(
            f"cannot write {target}: folder {parent} does not exist; create it or pass -o with "
            "an existing folder"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {target}: folder {parent} is not writable; pass -o DIR")

    seg_model = _model_for(model, cfg)
    card = seg_model.card
    if info.dtype != card.dtype:
        gdal_type = readmod.GDAL_TYPE_NAMES.get(card.dtype, card.dtype)
        raise BandMismatchError(
            f"the model expects {card.dtype} pixels but {info.path} holds {info.dtype}; convert "
            f"the scene (e.g. gdal_translate -ot {gdal_type} -scale) or pass another --model"
        )
    chosen = readmod.select_bands(info, card.bands, cfg.bands)
    read_grid = grid.plan_read(info, card, cfg.tiling.resolution)
    _say_resolution(read_grid, card, cfg.tiling.resolution, say)

    partial = _open_partial(
        target, info, members, seg_model, chosen, cfg, read_grid, resume=resume, say=say
    )
    tmp_dir = partial.path
    try:
        source: str | Path = str(scene)
        if vrt_xml is not None:
            source = mosaic.write_vrt(vrt_xml, tmp_dir / "mosaic.vrt")
        with rasterio.Env(GDAL_CACHEMAX=256 * 1024 * 1024, GDAL_NUM_THREADS="ALL_CPUS"):
            result = _run(
                source, info, seg_model, chosen, cfg, tmp_dir, target, progress, say, engine,
                partial, read_grid,
            )  # fmt: skip
        partial.finish(overwrite=overwrite)
    except KeyboardInterrupt:
        partial.keep()  # for --resume; the journal says what is done
        raise
    except BaseException as exc:
        partial.discard()
        if isinstance(exc, OSError) and not isinstance(exc, GeosegError):
            if exc.errno in _WRITE_ERRNOS:
                raise OutputError(
                    f"cannot write the outputs of {target}: {exc.strerror} ({exc.filename}); "
                    "free some space or pass -o with another folder"
                ) from exc
        raise
    result.timings["total"] = time.perf_counter() - t_start
    moved = _moved(result, tmp_dir, target)
    if vrt_xml is not None:
        moved = dataclasses.replace(moved, scene=str(target / "mosaic.vrt"))
    return moved


def _model_for(model: str | Path | SegmentationModel | None, cfg: RunConfig) -> SegmentationModel:
    """The model to run: as given, or the default one for the configured device."""
    if isinstance(model, SegmentationModel):
        return model
    if cfg.model is None or cfg.model == "default":
        return load_default(cfg.inference.device)
    return load_model(cfg.model)


#: errno values that mean "the outputs cannot be written here" rather than a bug.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def _say_resolution(read_grid: ReadGrid, card: Any, resolution: str | float, say: Log) -> None:
    """Say how a resampled scene is read; warn when a scene is read outside the model's range."""
    if read_grid.resampled:
        say(read_grid.describe())
        return
    gsd, span = read_grid.scene_gsd, card.gsd_range
    if gsd is None or not span or span[0] <= gsd <= span[1]:
        return
    from geoseg.io.grid import auto_gsd

    nearest = auto_gsd(gsd, span)
    why = read_grid.note or (
        f"; --resolution {resolution} was asked (--resolution {nearest:g} reads it at the "
        "nearest pixel size the model was trained at)"
    )
    warnings.warn(
        f"the scene's pixels are {gsd:.3g} m, outside the {span[0]:g}-{span[1]:g} m the model "
        f"was trained at, and it is read at that size{why}",
        ResolutionWarning,
        stacklevel=3,
    )


def _open_partial(
    target: Path,
    info: SceneInfo,
    members: Sequence[str],
    seg_model: SegmentationModel,
    chosen: tuple[int, ...],
    cfg: RunConfig,
    read_grid: ReadGrid,
    *,
    resume: bool,
    say: Log,
) -> PartialRun:
    """Check that the run fits in memory, then open its partial folder (fresh or resumed).

    The journal's fingerprint holds everything that changes output pixels, so that a resumed run
    is refused unless it would write exactly what the interrupted one would have.
    """
    from geoseg.engine.inference import autocast_dtype
    from geoseg.engine.journal import PartialRun, model_fingerprint, scene_fingerprint
    from geoseg.engine.memory import check_memory
    from geoseg.engine.tiling import make_grid
    from geoseg.io.write import suggested_block
    from geoseg.model.device import resolve_device

    card = seg_model.card
    inf = cfg.inference
    tile_size, overlap = cfg.tiling.resolve(card.tile_size, card.tile_overlap)
    height, width = read_grid.height, read_grid.width
    grid = make_grid(height, width, tile_size, overlap, multiple=card.output_stride)
    device = resolve_device(inf.device)
    block = suggested_block(info.width, info.height, cfg.output.block_size)
    check_memory(
        tile_height=grid.rows.size, tile_width=grid.cols.size, bands=len(chosen),
        classes=card.num_classes, batch_size=min(inf.batch_size, len(grid)),
        scene_width=max(info.width, width), block_size=block, multiple=card.output_stride,
        prefetch_batches=inf.prefetch_batches, probabilities=cfg.output.probabilities,
        device=str(device),
    )  # fmt: skip
    unrelated = {"device", "precision", "read_threads", "prefetch_batches"}
    settings = {
        "tile_size": [grid.rows.size, grid.cols.size],
        "overlap": overlap,
        "bands": list(chosen),
        "device": device.type,
        "precision": str(autocast_dtype(device, inf.precision) or "fp32"),
        "probabilities": cfg.output.probabilities,
        "block_size": block,
        **read_grid.settings(),
        **{k: v for k, v in dataclasses.asdict(inf).items() if k not in unrelated},
    }
    fingerprint = {
        "scene": scene_fingerprint(info, members),
        "model": model_fingerprint(seg_model),
        "settings": settings,
    }
    return PartialRun.open(target, fingerprint, resume=resume, log=say)


def _moved(result: SegmentResult, tmp_dir: Path, target: Path) -> SegmentResult:
    def move(p: Path | None) -> Path | None:
        return None if p is None else target / p.relative_to(tmp_dir)

    return SegmentResult(
        **{
            **result.__dict__,
            "out_dir": target,
            "classes_path": move(result.classes_path),
            "confidence_path": move(result.confidence_path),
            "probabilities_path": move(result.probabilities_path),
            "preview_path": move(result.preview_path),
            "vector_path": move(result.vector_path),
        }  # fmt: skip
    )


class _Sink:
    """Applies ``fn`` to items on a background thread (stitching/writing overlaps inference)."""

    def __init__(self, fn: Callable[[Any], None], depth: int = 2) -> None:
        self._fn = fn
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="geoseg-stitch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._fn(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop the thread without applying ``fn`` to what is still queued (error paths)."""
        if self._error is None:
            self._error = GeosegError("cancelled")
        self._q.put(None)
        self._thread.join()


def _run(
    scene: str | Path,
    info: Any,
    seg_model: SegmentationModel,
    chosen: tuple[int, ...],
    cfg: RunConfig,
    tmp_dir: Path,
    target: Path,
    progress: bool,
    say: Log,
    engine: Engine | None = None,
    partial: PartialRun | None = None,
    read_grid: ReadGrid | None = None,
) -> SegmentResult:
    from rasterio.enums import Resampling

    from geoseg.engine.regrid import first_grid_row
    from geoseg.engine.stitch import NODATA_CLASS, NODATA_CONFIDENCE, NODATA_PROBABILITY
    from geoseg.engine.tiling import make_grid
    from geoseg.io.grid import ReadGrid
    from geoseg.io.write import RasterWriter, class_tags, suggested_block, write_preview

    card = seg_model.card
    timings: dict[str, float] = {}
    tile_size, overlap = cfg.tiling.resolve(card.tile_size, card.tile_overlap)
    read_grid = read_grid or ReadGrid.native(info)
    grid = make_grid(
        read_grid.height, read_grid.width, tile_size, overlap, multiple=card.output_stride
    )
    say(
        f"geoseg: model {card.name} ({card.arch}/{card.encoder}); {info.width}x{info.height} px, "
        f"bands {list(chosen)}, {len(grid)} tiles of {grid.rows.size}x{grid.cols.size} px"
        + (f" (read at {read_grid.width}x{read_grid.height} px)" if read_grid.resampled else "")
    )
    block = suggested_block(info.width, info.height, cfg.output.block_size)
    rows_done = partial.rows_done if partial is not None else 0
    common = {"width": info.width, "height": info.height, "crs": info.crs,
              "transform": info.transform, "block": block, "resume_rows": rows_done}  # fmt: skip
    writers: dict[str, RasterWriter] = {
        "classes": RasterWriter(
            tmp_dir / "classes.tif", count=1, nodata=NODATA_CLASS, colormap=card.classes.colormap(),
            descriptions=["class"], band_tags=class_tags(card.classes), **common,
        ),
        "confidence": RasterWriter(
            tmp_dir / "confidence.tif", count=1, nodata=NODATA_CONFIDENCE,
            descriptions=["confidence (winning class probability x 255)"],
            resampling=Resampling.average, **common,
        ),
    }  # fmt: skip
    if cfg.output.probabilities:
        writers["probabilities"] = RasterWriter(
            tmp_dir / "probabilities.tif", count=card.num_classes, nodata=NODATA_PROBABILITY,
            descriptions=[f"p({c.name}) x 254" for c in card.classes],
            resampling=Resampling.average, **common,
        )  # fmt: skip
    # a resumed run restarts at the tile row whose band holds the first row not yet written
    grid_row = first_grid_row(read_grid, rows_done)
    first_row = grid.rows.band_of(grid_row) if rows_done < info.height else len(grid.rows.starts)
    resampled = read_grid if read_grid.resampled else None
    job = TileJob(
        str(scene), chosen, grid, card, cfg.inference,
        cfg.output.probabilities or resampled is not None, first_row, resampled,
    )  # fmt: skip
    from tqdm import tqdm

    bar = tqdm(total=len(grid), unit="tile", disable=not progress, dynamic_ncols=True, delay=0.1)
    count_tiles = _tile_counter(bar)
    count_tiles(first_row * len(grid.cols.starts))
    try:
        t0 = time.perf_counter()
        if first_row < len(grid.rows.starts):
            with _scene_sink(writers, partial, rows_done, job, str(scene)) as on_band:
                stats = (engine or local_engine)(job, seg_model, on_band, count_tiles, say)
        else:
            stats = EngineStats(device="none (every row was written before the interruption)")
        timings["tiles"] = time.perf_counter() - t0
        bar.close()
        timings["inference"] = stats.inference
        timings["stitch_write"] = stats.stitch
        t0 = time.perf_counter()
        if partial is not None:
            partial.checkpoint(writers.values(), final=True)
        paths = {name: w.close() for name, w in writers.items()}
        timings["cog"] = time.perf_counter() - t0
        from geoseg.vector.qgis import write_raster_style  # QGIS opens classes.tif with classes.qml

        write_raster_style(paths["classes"], card.classes)
    except KeyboardInterrupt:
        bar.close()
        if partial is not None:
            partial.suspend(writers.values())
        raise
    except BaseException:
        bar.close()
        for w in writers.values():
            w.abort()
        raise
    skipped = stats.tiles_skipped
    if skipped == len(grid):
        say("geoseg: every tile is nodata; outputs hold nodata only")

    preview_path = None
    if cfg.output.preview:
        t0 = time.perf_counter()
        preview_path = write_preview(
            scene, chosen, paths["classes"], card.classes, tmp_dir / "preview.png"
        )
        timings["preview"] = time.perf_counter() - t0
    vector_path = _vectorize(paths["classes"], card.classes, cfg, tmp_dir, timings)

    (tmp_dir / "run.json").write_text(
        json.dumps(
            {
                "model": card.to_dict() | {"metrics": dict(card.metrics)},
                "settings": {
                    "tile_size": grid.rows.size,
                    "overlap": overlap,
                    "bands": list(chosen),
                    "device": stats.device,
                    "resolution": cfg.tiling.resolution,
                    "scene_gsd": read_grid.scene_gsd,
                    **read_grid.settings(),
                },
            },
            indent=2,
            default=str,
        )  # fmt: skip
    )
    return SegmentResult(
        scene=str(scene), out_dir=tmp_dir, classes_path=paths["classes"],
        confidence_path=paths["confidence"], probabilities_path=paths.get("probabilities"),
        preview_path=preview_path, vector_path=vector_path, classes=card.classes,
        device=stats.device, bands=chosen, tile_size=max(grid.rows.size, grid.cols.size),
        overlap=overlap, tiles_total=len(grid), tiles_skipped=skipped,
        width=info.width, height=info.height, timings=timings,
    )  # fmt: skip


def _tile_counter(bar: Any) -> Progress:
    """Count finished tiles on a tqdm ``bar`` so that each of its lines is printed once.

    A log, CI output or any other stream that keeps what was written shows every drawing. tqdm
    draws the bar when ``update`` reaches the total and again, with the overall rate, when it is
    closed: the count that completes the bar is only stored, for ``close`` to draw. The bar is
    made with a ``delay`` so that the engine's status lines (its device) come before the first
    drawing instead of on the same line; as ``close`` draws nothing for a bar never drawn, a bar
    that only gets its final count is drawn once before it.
    """
    drawn = False

    def count(tiles: int) -> None:
        nonlocal drawn
        if tiles <= 0:  # a halo row's tiles (a resumed run): nothing new to draw
            return
        if bar.n + tiles < bar.total:
            drawn = bool(bar.update(tiles)) or drawn
            return
        if not drawn:  # where the bar stood (not drawn either in a run shorter than the delay)
            drawn = bool(bar.update(0))
        bar.n += tiles

    return count


@dataclass(frozen=True)
class TileJob:
    """What an engine needs to turn tile rows of one scene into finished bands; picklable."""

    scene: str
    bands: tuple[int, ...]
    grid: TileGrid
    card: ModelCard
    inference: InferenceConfig
    probabilities: bool
    first_row: int = 0  # tile rows above it are already written (a resumed run)
    read_grid: ReadGrid | None = None  # tiles read resampled onto this grid (None: the scene's)


@dataclass
class EngineStats:
    """What an engine did: the device it ran on, tile counts and the seconds spent per step."""

    device: str
    tiles_run: int = 0  # forward passes over tiles, halo rows included
    tiles_skipped: int = 0  # tiles of the requested rows that held no valid pixel
    inference: float = 0.0  # seconds in the model's forward passes
    stitch: float = 0.0  # seconds blending tiles and handing bands on (a background thread)

    def merge(self, other: EngineStats) -> None:
        """Add the counts and seconds of another (e.g. a block's) to these."""
        self.tiles_run += other.tiles_run
        self.tiles_skipped += other.tiles_skipped
        self.inference += other.inference
        self.stitch += other.stitch


BandSink = Callable[[Band], None]
Progress = Callable[[int], object]
#: ``engine(job, model, sink, progress, log)`` turns a job into bands handed in row order to sink.
Engine = Callable[[TileJob, SegmentationModel, BandSink, Progress, Log], EngineStats]


def run_tile_rows(
    job: TileJob,
    predictor: Predictor,
    on_band: BandSink,
    *,
    rows: range | None = None,
    on_tiles: Progress | None = None,
) -> EngineStats:
    """Read, infer and stitch the tile rows ``rows`` (default: all) of a scene.

    The one tile loop of geoseg, shared by the local and the dask engine. Tiles are read and
    normalised on background threads and stitched on another, so the calling thread only runs the
    model. ``on_band`` receives the finished bands of ``rows`` in row order, on the stitching
    thread. When ``rows`` starts below the first tile row, the tile row above it is inferred as
    a halo so that the bands are identical to those of a whole-scene run.
    """
    from geoseg.engine.inference import Normaliser, prefetch, read_batches
    from geoseg.engine.stitch import Stitcher
    from geoseg.io.read import TileReader

    grid = job.grid
    rows = rows if rows is not None else range(len(grid.rows.starts))
    stitcher = Stitcher(
        grid, job.card.num_classes, probabilities=job.probabilities, first_row=rows.start
    )
    ncols = len(grid.cols.starts)
    first, stop = stitcher.halo_row * ncols, rows.stop * ncols
    # Batches hold exactly the tiles they hold in a whole-scene run, because some models' outputs
    # change in the last bits with the batch (oneDNN picks other kernels for a batch of one);
    # the extra tiles this reads at either end are inferred and dropped.
    size = job.inference.batch_size
    tiles = list(grid)[first - first % size : min(-(-stop // size) * size, len(grid))]
    stats = EngineStats(device=str(predictor.device))

    def stitch(item: tuple[Any, np.ndarray | None]) -> None:
        batch, probs = item
        t0 = time.perf_counter()
        for i, tile in enumerate(batch.tiles):
            if not first <= tile.index < stop:
                continue
            p = probs[batch.run.index(i)] if i in batch.run and probs is not None else None
            valid = batch.valid[i] if p is not None else None
            for band in stitcher.add(tile, p, valid):
                on_band(band)
        stats.stitch += time.perf_counter() - t0

    reader = TileReader(job.scene, job.bands, job.read_grid)
    normalise = Normaliser(job.card.mean, job.card.std)
    inf = job.inference
    try:
        sink = _Sink(stitch)
        try:
            batches = read_batches(tiles, reader.read, normalise, inf.batch_size, inf.read_threads)
            stream = prefetch(batches, inf.prefetch_batches)
            for batch in stream:
                probs = None
                if batch.run:
                    t0 = time.perf_counter()
                    probs = predictor.predict(batch.inputs)
                    stats.inference += time.perf_counter() - t0
                stats.tiles_run += len(batch.run)
                in_rows = [rows.start <= t.row < rows.stop for t in batch.tiles]
                stats.tiles_skipped += sum(
                    1 for i, inside in enumerate(in_rows) if inside and i not in batch.run
                )
                sink.put((batch, probs))
                if on_tiles is not None:
                    on_tiles(sum(in_rows))
        except BaseException:
            stream.close()  # stops the reading threads before their datasets are closed
            sink.cancel()
            raise
        sink.close()
    finally:
        reader.close()
    return stats


def local_engine(
    job: TileJob, model: SegmentationModel, on_band: BandSink, on_tiles: Progress, say: Log
) -> EngineStats:
    """Run every tile row of ``job`` in this process (the default engine)."""
    from geoseg.engine.inference import Predictor

    inf = job.inference
    predictor = Predictor(model, inf.device, inf.precision, tta=inf.tta)
    say(f"geoseg: device {predictor.description}")
    rows = range(job.first_row, len(job.grid.rows.starts))
    return run_tile_rows(job, predictor, on_band, rows=rows, on_tiles=on_tiles)


def _resumable_sink(
    writers: dict[str, Any], partial: PartialRun | None, rows_done: int
) -> BandSink:
    """Write bands, skipping rows a resumed run already has, and journal each durable block row."""

    def write(band: Band) -> None:
        if band.row_off + band.height <= rows_done:
            return
        if band.row_off < rows_done:
            band = band.rows_from(rows_done)
        _write_band(writers, band)
        if partial is not None:
            partial.checkpoint(writers.values())

    return write


@contextlib.contextmanager
def _scene_sink(
    writers: dict[str, Any], partial: PartialRun | None, rows_done: int, job: TileJob, scene: str
) -> Iterator[BandSink]:
    """Where an engine's bands go: the writers, through a :class:`Regridder` when resampled."""
    write = _resumable_sink(writers, partial, rows_done)
    if job.read_grid is None:
        yield write
        return
    from geoseg.engine.regrid import Regridder
    from geoseg.io.grid import scene_validity

    grid = job.read_grid
    with scene_validity(scene, job.bands, grid.scene_width) as validity:
        regridder = Regridder(
            grid, job.card.num_classes, write, validity,
            probabilities="probabilities" in writers, first_row=rows_done,
        )  # fmt: skip
        yield regridder.add


def _write_band(writers: dict[str, Any], band: Any) -> None:
    writers["classes"].write(band.row_off, band.classes)
    writers["confidence"].write(band.row_off, band.confidence)
    if "probabilities" in writers:
        writers["probabilities"].write(band.row_off, band.probabilities)


def _vectorize(
    classes_path: Path,
    classes: ClassTable,
    cfg: RunConfig,
    tmp_dir: Path,
    timings: dict[str, float],
) -> Path | None:
    if not cfg.output.vectorize:
        return None
    from geoseg.vector.vectorize import vectorize

    t0 = time.perf_counter()
    out = tmp_dir / "classes.gpkg"
    vectorize(classes_path, out, classes=classes, min_area=cfg.output.min_area,
              simplify=cfg.output.simplify)  # fmt: skip
    timings["vectorize"] = time.perf_counter() - t0
    return out


__all__ = ["SegmentResult", "default_out_dir", "segment", "GeosegError"]
