"""``segment``: the one function composing read -> tile -> infer -> stitch -> write -> vectorize.

It composes the engine's steps: the run is planned and checked before anything is written
(:mod:`geoseg.engine.plan`), an engine runs the tile loop (:mod:`geoseg.engine.loop`) into the
output rasters (:mod:`geoseg.engine.outputs`), and this module adds what lies above the engine:
the QGIS style, the preview, the vectors and ``run.json``, all in a partial folder renamed to the
output folder once complete.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from geoseg.config import RunConfig, load_config
from geoseg.engine.confidence import ConfidenceCheck, check_low_confidence
from geoseg.engine.loop import Engine, Log, local_engine
from geoseg.engine.plan import (
    RunPlan,
    check_target,
    model_for,
    open_partial,
    open_scene,
    plan_run,
)
from geoseg.errors import GeosegError, OutputError, recorded_warnings
from geoseg.model import ModelCard, SegmentationModel
from geoseg.types import ClassTable

if TYPE_CHECKING:
    from geoseg.engine.journal import PartialRun


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
    # Share of valid pixels under the card's low-confidence threshold (None: none valid).
    low_confidence_share: float | None = None

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
            "low_confidence_share": self.low_confidence_share,
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
    scale: str | Sequence[float] | None = None,
) -> RunConfig:
    """Merge a config (object or YAML path) with explicit keyword overrides."""
    from geoseg.types import ScaleSpec

    cfg = config if isinstance(config, RunConfig) else load_config(config)
    return cfg.replace(
        top={
            "model": str(model) if isinstance(model, str | Path) else None,
            "bands": bands,
            "scale": str(ScaleSpec.parse(scale)) if scale is not None else None,
        },
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
    scale: str | Sequence[float] | None = None,
) -> SegmentResult:
    """Segment a raster scene into land-cover classes and write georeferenced outputs.

    Writes ``classes.tif`` (uint8 COG, 255 = nodata, colour table), ``confidence.tif``,
    optionally ``probabilities.tif``, ``preview.png`` and ``classes.gpkg`` into ``out_dir``
    (default: ``<scene>_geoseg/`` next to the scene). Everything is written into a temporary
    folder that is renamed when complete; an existing ``out_dir`` is refused unless ``overwrite``.
    That folder, ``.<out_dir name>.partial``, journals the rows written: an interrupted run
    (Ctrl-C, a kill, a crash) continues from there with ``resume=True``; a stale one is replaced.

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
        tta: test-time augmentation: ``none``, ``mirror`` (2 passes), ``flips`` (4) or ``d4`` (8).
        engine: what turns tiles into bands (default :func:`local_engine`; dask: distributed).
        resume: continue the interrupted run into ``out_dir`` (same inputs, else ResumeError).
        resolution: the pixel size tiles are read at: ``auto`` (default: the model's own when
            the scene's is outside its range), ``native`` or metres; outputs keep the scene's grid.
        scale: scene values to the model's: auto (default), none, LO,HI, pN,pM (io.stretch).
    """
    t_start = time.perf_counter()
    say: Log = log or (lambda _msg: None)
    cfg = resolve_config(
        config, model=model, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        device=device, bands=bands, probabilities=probabilities, vectorize=vectorize,
        preview=preview, min_area=min_area, simplify=simplify, tta=tta, resolution=resolution,
        scale=scale,
    )  # fmt: skip
    with recorded_warnings() as warned:  # run.json lists the geoseg warnings this run raised
        opened = open_scene(scene, allow_ungeoreferenced=allow_ungeoreferenced)
        target = Path(out_dir) if out_dir is not None else default_out_dir(scene)
        check_target(target, overwrite=overwrite)
        run = plan_run(opened, target, model_for(model, cfg), cfg, say, resume=resume)
        partial = open_partial(run, resume=resume, say=say)
        result = _run_in_partial(str(scene), run, partial, warned, overwrite=overwrite,
                                 progress=progress, say=say, engine=engine)  # fmt: skip
    result.timings["total"] = time.perf_counter() - t_start
    return _in_target(result, partial.path, run)


#: errno values that mean "the outputs cannot be written here" rather than a bug.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def _run_in_partial(
    scene: str,
    run: RunPlan,
    partial: PartialRun,
    warned: list[dict[str, str]],
    *,
    overwrite: bool,
    progress: bool,
    say: Log,
    engine: Engine | None,
) -> SegmentResult:
    """Write every output into the partial folder, then rename it to the target.

    Ctrl-C keeps the folder for ``resume``; any other failure removes it, and an OS error that
    means the outputs cannot be written there (full disk, no permission) becomes an
    :class:`~geoseg.errors.OutputError` that says so.
    """
    import rasterio

    from geoseg.io import mosaic

    tmp_dir = partial.path
    try:
        source: str | Path = scene
        if run.scene.vrt_xml is not None:
            source = mosaic.write_vrt(run.scene.vrt_xml, tmp_dir / "mosaic.vrt")
        with rasterio.Env(GDAL_CACHEMAX=256 * 1024 * 1024, GDAL_NUM_THREADS="ALL_CPUS"):
            result = _write_outputs(
                source, run, partial, warned, progress, say, engine or local_engine
            )
        partial.finish(overwrite=overwrite)
    except KeyboardInterrupt:
        partial.keep()  # for --resume; the journal says what is done
        raise
    except BaseException as exc:
        partial.discard()
        if isinstance(exc, OSError) and not isinstance(exc, GeosegError):
            if exc.errno in _WRITE_ERRNOS:
                raise OutputError(
                    f"cannot write the outputs of {run.target}: {exc.strerror} "
                    f"({exc.filename}); free some space or pass -o with another folder"
                ) from exc
        raise
    return result


def _write_outputs(
    scene: str | Path, run: RunPlan, partial: PartialRun, warned: list[dict[str, str]],
    progress: bool, say: Log, engine: Engine,
) -> SegmentResult:  # fmt: skip
    """Write the rasters of ``scene`` (its file, or a mosaic's VRT), then the other outputs."""
    from geoseg.engine.outputs import open_writers, write_rasters
    from geoseg.vector.qgis import write_raster_style

    info, card, cfg, grid = run.scene.info, run.model.card, run.cfg, run.grid
    read_grid = run.read_grid
    say(
        f"geoseg: model {card.name} ({card.arch}/{card.encoder}); {info.width}x{info.height} px, "
        f"bands {list(run.bands)}, {len(grid)} tiles of {grid.rows.size}x{grid.cols.size} px"
        + (f" (read at {read_grid.width}x{read_grid.height} px)" if read_grid.resampled else "")
    )
    writers = open_writers(
        info, card, partial.path, block=run.block, rows_done=partial.rows_done,
        probabilities=cfg.output.probabilities,
    )  # fmt: skip
    job = run.tile_job(str(scene), partial.rows_done)
    written = write_rasters(job, run.model, writers, partial, engine, progress=progress, say=say)
    paths, stats = written.paths, written.stats
    timings = {"statistics": run.stretch_seconds, **written.timings}
    write_raster_style(paths["classes"], card.classes)  # QGIS opens classes.tif with classes.qml
    confidence = _check_confidence(paths["confidence"], card, scene, timings)
    if stats.tiles_skipped == len(grid):
        say("geoseg: every tile is nodata; outputs hold nodata only")
    preview_path = _preview(scene, run, paths["classes"], partial.path, timings)
    vector_path = _vectorize(paths["classes"], card.classes, cfg, partial.path, timings)
    _write_run_json(partial, run, stats.device, confidence.to_dict(), warned)
    return SegmentResult(
        scene=str(scene), out_dir=partial.path, classes_path=paths["classes"],
        confidence_path=paths["confidence"], probabilities_path=paths.get("probabilities"),
        preview_path=preview_path, vector_path=vector_path, classes=card.classes,
        device=stats.device, bands=run.bands, tile_size=max(grid.rows.size, grid.cols.size),
        overlap=run.overlap, tiles_total=len(grid), tiles_skipped=stats.tiles_skipped,
        width=info.width, height=info.height, timings=timings,
        low_confidence_share=confidence.share,
    )  # fmt: skip


def _check_confidence(
    confidence_path: Path, card: ModelCard, scene: str | Path, timings: dict[str, float]
) -> ConfidenceCheck:
    """The run's :class:`~geoseg.engine.confidence.ConfidenceCheck` (warning when unusual)."""
    from geoseg.io.histogram import byte_histogram

    t0 = time.perf_counter()
    counts = byte_histogram(confidence_path)
    check = check_low_confidence(counts, card.calibration, Path(str(scene)).name)
    timings["confidence_check"] = time.perf_counter() - t0
    return check


def _preview(
    scene: str | Path, run: RunPlan, classes_path: Path, tmp_dir: Path, timings: dict[str, float]
) -> Path | None:
    """``preview.png`` when the run asks for it: the scene with its class map overlaid."""
    if not run.cfg.output.preview:
        return None
    from geoseg.io.write import write_preview

    t0 = time.perf_counter()
    classes = run.model.card.classes
    out = write_preview(scene, run.bands, classes_path, classes, tmp_dir / "preview.png")
    timings["preview"] = time.perf_counter() - t0
    return out


def _vectorize(
    classes_path: Path,
    classes: ClassTable,
    cfg: RunConfig,
    tmp_dir: Path,
    timings: dict[str, float],
) -> Path | None:
    """``classes.gpkg`` when the run asks for it: the class raster as polygons."""
    if not cfg.output.vectorize:
        return None
    from geoseg.vector.vectorize import vectorize

    t0 = time.perf_counter()
    out = tmp_dir / "classes.gpkg"
    vectorize(classes_path, out, classes=classes, min_area=cfg.output.min_area,
              simplify=cfg.output.simplify)  # fmt: skip
    timings["vectorize"] = time.perf_counter() - t0
    return out


def _write_run_json(
    partial: PartialRun, run: RunPlan, device: str, confidence: dict[str, Any] | None = None,
    warned: list[dict[str, str]] | None = None,
) -> None:  # fmt: skip
    """``run.json``: the model card, the settings, the confidence and the warnings raised.

    The model's entry holds its card, its metrics and ``sha256``, the digest of its card and
    weights that a fine-tune's card names its start model by (the journal's, computed once).
    """
    card = run.model.card
    settings = {
        "tile_size": run.grid.rows.size,
        "overlap": run.overlap,
        "bands": list(run.bands),
        "device": device,
        "tta": run.tta,
        "resolution": run.cfg.tiling.resolution,
        "scene_gsd": run.read_grid.scene_gsd,
        **run.read_grid.settings(),
        **run.stretch_settings(),
    }
    sha256 = partial.fingerprint["model"]["sha256"]
    (partial.path / "run.json").write_text(
        json.dumps(
            {
                "model": card.to_dict() | {"metrics": dict(card.metrics), "sha256": sha256},
                "settings": settings,
                **(confidence or {}),
                "warnings": list(warned or []),
            },
            indent=2,
            default=str,
        )
    )


def _in_target(result: SegmentResult, tmp_dir: Path, run: RunPlan) -> SegmentResult:
    """``result`` with its paths moved from the partial folder to the target it was renamed to."""
    target = run.target

    def move(p: Path | None) -> Path | None:
        return None if p is None else target / p.relative_to(tmp_dir)

    moved = SegmentResult(
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
    if run.scene.vrt_xml is not None:  # a mosaic's scene is the VRT kept with its outputs
        moved = dataclasses.replace(moved, scene=str(target / "mosaic.vrt"))
    return moved


__all__ = ["SegmentResult", "default_out_dir", "segment", "GeosegError"]
