"""The output rasters of a run: opened, fed an engine's bands, closed into COGs.

``classes.tif``, ``confidence.tif`` and (optionally) ``probabilities.tif`` are written by one
:class:`~geoseg.io.write.RasterWriter` each, in row order, whatever the engine. A resumed run skips
the rows its journal says are written; a resampled read goes through a
:class:`~geoseg.engine.regrid.Regridder` back onto the scene's own grid. Ctrl-C leaves the rows
written so far durable for ``--resume``; any other error deletes the files.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.engine.loop import BandSink, Engine, EngineStats, Log, Progress, TileJob
from geoseg.engine.stitch import Band

if TYPE_CHECKING:
    from geoseg.engine.journal import PartialRun
    from geoseg.io.read import SceneInfo
    from geoseg.io.write import RasterWriter
    from geoseg.model import ModelCard, SegmentationModel


@dataclass(frozen=True)
class WrittenRasters:
    """The closed output rasters: their paths by name, what the engine did, and the seconds."""

    paths: dict[str, Path]
    stats: EngineStats
    timings: dict[str, float]  # tiles, inference, stitch_write, cog


def open_writers(
    info: SceneInfo,
    card: ModelCard,
    folder: Path,
    *,
    block: int,
    rows_done: int,
    probabilities: bool,
) -> dict[str, RasterWriter]:
    """The writers of ``classes``, ``confidence`` and (optionally) ``probabilities`` in ``folder``.

    They are on the scene's own grid; ``rows_done`` rows are already in them (a resumed run).
    """
    from rasterio.enums import Resampling

    from geoseg.engine.stitch import NODATA_CLASS, NODATA_CONFIDENCE, NODATA_PROBABILITY
    from geoseg.io.write import RasterWriter, class_tags

    common = {"width": info.width, "height": info.height, "crs": info.crs,
              "transform": info.transform, "block": block, "resume_rows": rows_done}  # fmt: skip
    writers: dict[str, RasterWriter] = {
        "classes": RasterWriter(
            folder / "classes.tif", count=1, nodata=NODATA_CLASS, colormap=card.classes.colormap(),
            descriptions=["class"], band_tags=class_tags(card.classes), **common,
        ),
        "confidence": RasterWriter(
            folder / "confidence.tif", count=1, nodata=NODATA_CONFIDENCE,
            descriptions=["confidence (winning class probability x 255)"],
            resampling=Resampling.average, **common,
        ),
    }  # fmt: skip
    if probabilities:
        writers["probabilities"] = RasterWriter(
            folder / "probabilities.tif", count=card.num_classes, nodata=NODATA_PROBABILITY,
            descriptions=[f"p({c.name}) x 254" for c in card.classes],
            resampling=Resampling.average, **common,
        )  # fmt: skip
    return writers


def write_rasters(
    job: TileJob,
    model: SegmentationModel,
    writers: dict[str, RasterWriter],
    partial: PartialRun | None,
    engine: Engine,
    *,
    progress: bool,
    say: Log,
) -> WrittenRasters:
    """Run ``engine`` over ``job`` into ``writers``, then close them into COGs.

    Ctrl-C makes the rows written so far durable and journals them (for ``--resume``); any other
    error deletes the writers' files. ``progress`` shows a tile progress bar.
    """
    from tqdm import tqdm

    grid = job.grid
    rows_done = partial.rows_done if partial is not None else 0
    timings: dict[str, float] = {}
    bar = tqdm(total=len(grid), unit="tile", disable=not progress, dynamic_ncols=True, delay=0.1)
    count_tiles = _tile_counter(bar)
    count_tiles(job.first_row * len(grid.cols.starts))
    try:
        t0 = time.perf_counter()
        if job.first_row < len(grid.rows.starts):
            with _scene_sink(writers, partial, rows_done, job) as on_band:
                stats = engine(job, model, on_band, count_tiles, say)
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
    return WrittenRasters(paths, stats, timings)


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
    writers: dict[str, Any], partial: PartialRun | None, rows_done: int, job: TileJob
) -> Iterator[BandSink]:
    """Where an engine's bands go: the writers, through a :class:`Regridder` when resampled."""
    write = _resumable_sink(writers, partial, rows_done)
    if job.read_grid is None:
        yield write
        return
    from geoseg.engine.regrid import Regridder
    from geoseg.io.grid import scene_validity

    grid = job.read_grid
    with scene_validity(job.scene, job.bands, grid.scene_width) as validity:
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


__all__ = ["WrittenRasters", "open_writers", "write_rasters"]
