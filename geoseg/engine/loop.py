"""The one tile loop: tile rows of a scene read, inferred and stitched into finished row bands.

Every engine runs :func:`run_tile_rows`: :func:`local_engine` over all rows in this process,
:class:`geoseg.distributed.DaskEngine` over blocks of rows on dask workers. An engine is any
callable of the :data:`Engine` shape: it turns a :class:`TileJob` into bands handed in row order to
a sink, and says what it did in an :class:`EngineStats`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.config import InferenceConfig
from geoseg.engine.stitch import Band
from geoseg.engine.tiling import TileGrid
from geoseg.errors import GeosegError
from geoseg.model import ModelCard, SegmentationModel
from geoseg.types import Stretch

if TYPE_CHECKING:
    from geoseg.engine.inference import Predictor
    from geoseg.io.grid import ReadGrid

Log = Callable[[str], None]


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
    stretch: Stretch | None = None  # scene values -> the model's (None: as they are)


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
    normalise = Normaliser(job.card.mean, job.card.std, job.stretch)
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


__all__ = [
    "BandSink",
    "Engine",
    "EngineStats",
    "Log",
    "Progress",
    "TileJob",
    "local_engine",
    "run_tile_rows",
]
