"""``segment``: the one function that composes read -> tile -> infer -> stitch -> write -> vectorize."""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.config import RunConfig, load_config
from geoseg.errors import BandMismatchError, GeosegError, OutputError, OutputExistsError, UngeoreferencedWarning
from geoseg.model import SegmentationModel, load_model
from geoseg.types import ClassTable

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
            "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
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


def default_out_dir(scene: str | Path) -> Path:
    """``scene_geoseg/`` next to the scene."""
    path = Path(str(scene))
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
) -> RunConfig:
    """Merge a config (object or YAML path) with explicit keyword overrides."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    return cfg.replace(
        top={"model": str(model) if isinstance(model, str | Path) else None, "bands": bands},
        tiling={"tile_size": tile_size, "overlap": overlap},
        inference={"batch_size": batch_size, "device": device},
        output={"probabilities": probabilities, "vectorize": vectorize, "preview": preview,
                "min_area": min_area, "simplify": simplify},  # fmt: skip
    )


def segment(
    scene: str | Path,
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
) -> SegmentResult:
    """Segment a raster scene into land-cover classes and write georeferenced outputs.

    Writes ``classes.tif`` (uint8 COG, 255 = nodata, colour table), ``confidence.tif``,
    optionally ``probabilities.tif``, ``preview.png`` and ``classes.gpkg`` into ``out_dir``
    (default: ``<scene>_geoseg/`` next to the scene). Everything is written into a temporary
    folder that is renamed when complete; an existing ``out_dir`` is refused unless ``overwrite``.

    Args:
        scene: path (or GDAL path/URL) of the input raster.
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
        simplify: vectorizing: coverage simplification tolerance (map units).
        allow_ungeoreferenced: accept rasters without CRS/geotransform (pixel coordinates).
        config: a :class:`RunConfig` or YAML path; keyword arguments override it.
        progress: show a progress bar.
        log: where to send status lines (default: nowhere).
    """
    import rasterio

    from geoseg import read as readmod

    t_start = time.perf_counter()
    say: Log = log or (lambda _msg: None)
    cfg = resolve_config(
        config, model=model, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        device=device, bands=bands, probabilities=probabilities, vectorize=vectorize,
        preview=preview, min_area=min_area, simplify=simplify,
    )  # fmt: skip

    with readmod.open_raster(scene) as ds:
        info = readmod.scene_info(ds)
    readmod.validate_scene(info, allow_ungeoreferenced=allow_ungeoreferenced)
    if not info.georeferenced:
        warnings.warn(
            f"{scene} has no georeferencing; outputs carry pixel coordinates",
            UngeoreferencedWarning,
            stacklevel=2,
        )
    target = Path(out_dir) if out_dir is not None else default_out_dir(scene)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass --overwrite to replace it or -o another folder")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {target}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {target}: folder {parent} is not writable; pass -o DIR")

    seg_model = model if isinstance(model, SegmentationModel) else load_model(cfg.model)
    card = seg_model.card
    if info.dtype != card.dtype:
        raise BandMismatchError(
            f"the model expects {card.dtype} pixels but {info.path} holds {info.dtype}; convert the "
            f"scene (e.g. gdal_translate -ot {card.dtype.capitalize()} -scale) or pass another --model"
        )
    chosen = readmod.select_bands(info, card.bands, cfg.bands)

    tmp_dir = parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    try:
        with rasterio.Env(GDAL_CACHEMAX=256 * 1024 * 1024, GDAL_NUM_THREADS="ALL_CPUS"):
            result = _run(scene, info, seg_model, chosen, cfg, tmp_dir, target, progress, say)
        from geoseg.write import rename_into_place

        rename_into_place(tmp_dir, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    result.timings["total"] = time.perf_counter() - t_start
    return _moved(result, tmp_dir, target)


def _moved(result: SegmentResult, tmp_dir: Path, target: Path) -> SegmentResult:
    def move(p: Path | None) -> Path | None:
        return None if p is None else target / p.relative_to(tmp_dir)

    return SegmentResult(
        **{**result.__dict__,
           "out_dir": target,
           "classes_path": move(result.classes_path),
           "confidence_path": move(result.confidence_path),
           "probabilities_path": move(result.probabilities_path),
           "preview_path": move(result.preview_path),
           "vector_path": move(result.vector_path)}  # fmt: skip
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
) -> SegmentResult:
    from rasterio.enums import Resampling

    from geoseg.inference import Normaliser, Predictor, prefetch, read_batches
    from geoseg.read import TileReader
    from geoseg.stitch import NODATA_CLASS, NODATA_CONFIDENCE, NODATA_PROBABILITY, Band, Stitcher
    from geoseg.tiling import make_grid
    from geoseg.write import RasterWriter, class_tags, suggested_block, write_preview

    card = seg_model.card
    timings: dict[str, float] = {}
    tile_size = cfg.tiling.tile_size or card.tile_size
    grid = make_grid(
        info.height, info.width, tile_size, cfg.tiling.overlap, multiple=card.output_stride
    )
    predictor = Predictor(seg_model, cfg.inference.device, cfg.inference.precision)
    say(
        f"geoseg: device {predictor.description}; model {card.name} ({card.arch}/{card.encoder}); "
        f"{info.width}x{info.height} px, bands {list(chosen)}, {len(grid)} tiles of "
        f"{grid.rows.size}x{grid.cols.size} px"
    )
    block = suggested_block(info.width, info.height, cfg.output.block_size)
    common = {"width": info.width, "height": info.height, "crs": info.crs,
              "transform": info.transform, "block": block}  # fmt: skip
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
    stitcher = Stitcher(grid, card.num_classes, probabilities=cfg.output.probabilities)
    stitch_time = [0.0]

    def stitch_and_write(item: tuple[Any, np.ndarray | None]) -> None:
        batch, probs = item
        t0 = time.perf_counter()
        for i, tile in enumerate(batch.tiles):
            p = probs[batch.run.index(i)] if i in batch.run and probs is not None else None
            valid = batch.valid[i] if p is not None else None
            for band in stitcher.add(tile, p, valid):
                _write_band(writers, band)
        stitch_time[0] += time.perf_counter() - t0

    skipped = 0
    infer_time = 0.0
    from tqdm import tqdm

    bar = tqdm(total=len(grid), unit="tile", disable=not progress, dynamic_ncols=True)
    reader = TileReader(scene, chosen)
    normalise = Normaliser(card.mean, card.std)
    try:
        sink = _Sink(stitch_and_write)
        batches = read_batches(
            list(grid), reader.read, normalise, cfg.inference.batch_size, cfg.inference.read_threads
        )
        for batch in prefetch(batches, cfg.inference.prefetch_batches):
            probs = None
            if batch.run:
                t0 = time.perf_counter()
                probs = predictor.predict(batch.inputs)
                infer_time += time.perf_counter() - t0
            skipped += len(batch.tiles) - len(batch.run)
            sink.put((batch, probs))
            bar.update(len(batch.tiles))
        sink.close()
        bar.close()
        timings["inference"] = infer_time
        timings["stitch_write"] = stitch_time[0]
        t0 = time.perf_counter()
        paths = {name: w.close() for name, w in writers.items()}
        timings["cog"] = time.perf_counter() - t0
    except BaseException:
        bar.close()
        for w in writers.values():
            w.abort()
        raise
    finally:
        reader.close()
    if skipped == len(grid):
        say("geoseg: every tile is nodata; outputs hold nodata only")

    preview_path = None
    if cfg.output.preview:
        t0 = time.perf_counter()
        preview_path = write_preview(scene, chosen, paths["classes"], card.classes, tmp_dir / "preview.png")
        timings["preview"] = time.perf_counter() - t0
    vector_path = _vectorize(paths["classes"], card.classes, cfg, tmp_dir, timings)

    (tmp_dir / "run.json").write_text(
        json.dumps({"model": card.to_dict() | {"metrics": dict(card.metrics)},
                    "settings": {"tile_size": grid.rows.size, "overlap": cfg.tiling.overlap,
                                 "bands": list(chosen), "device": str(predictor.device)}},
                   indent=2, default=str)  # fmt: skip
    )
    return SegmentResult(
        scene=str(scene), out_dir=tmp_dir, classes_path=paths["classes"],
        confidence_path=paths["confidence"], probabilities_path=paths.get("probabilities"),
        preview_path=preview_path, vector_path=vector_path, classes=card.classes,
        device=str(predictor.device), bands=chosen, tile_size=max(grid.rows.size, grid.cols.size),
        overlap=cfg.tiling.overlap, tiles_total=len(grid), tiles_skipped=skipped,
        width=info.width, height=info.height, timings=timings,
    )  # fmt: skip


def _write_band(writers: dict[str, Any], band: Any) -> None:
    writers["classes"].write(band.row_off, band.classes)
    writers["confidence"].write(band.row_off, band.confidence)
    if "probabilities" in writers:
        writers["probabilities"].write(band.row_off, band.probabilities)


def _vectorize(
    classes_path: Path, classes: ClassTable, cfg: RunConfig, tmp_dir: Path, timings: dict[str, float]
) -> Path | None:
    if not cfg.output.vectorize:
        return None
    from geoseg.vectorize import vectorize

    t0 = time.perf_counter()
    out = tmp_dir / "classes.gpkg"
    vectorize(classes_path, out, classes=classes, min_area=cfg.output.min_area,
              simplify=cfg.output.simplify)  # fmt: skip
    timings["vectorize"] = time.perf_counter() - t0
    return out


__all__ = ["SegmentResult", "default_out_dir", "segment", "GeosegError"]
