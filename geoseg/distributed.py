"""The dask.distributed backend: one scene split across workers, or many scenes across workers.

One scene (:func:`segment_distributed`): the tile grid is cut into blocks of whole tile rows.
Each block is a dask task that runs :func:`geoseg.engine.loop.run_tile_rows` -- the same read ->
infer -> stitch loop as the local engine -- over its rows plus one halo tile row above them, which
is exactly what the stitcher needs to rebuild the blended band carried into the block. The task
returns the block's finished row bands (uint8 classes, confidence, probabilities); the client
writes them in row order through the same :class:`~geoseg.io.write.RasterWriter` as a local run, so
``classes.tif`` equals the local engine's pixel for pixel and there is only ever one writer.

Many scenes (:func:`segment_many`): one task per scene, each a complete local ``segment`` on a
worker, writing its own output folder.

The model is loaded once on the client, scattered once to every worker and kept there; a worker
plugin caches one :class:`~geoseg.engine.inference.Predictor` per model and settings, and pins the
number of torch threads so that several workers on one machine do not oversubscribe its cores. The
device is resolved on each worker (``auto``: its GPU when it has one). Failed tasks are retried
by dask (``retries``); geoseg schedules nothing itself, it only limits how many blocks are in
flight so that finished bands waiting for the writer stay bounded.

Inputs and outputs must be reachable from the workers under the same path (a shared file system
or a URL); the model need not be, since it travels with the tasks.

Why no xarray/rioxarray here: blocks are defined by the tile grid's blend layout (non-uniform
halos, stitching state carried between tile rows), not by a regular chunking of the raster, and
the output is written by one ordered writer; a dask-backed DataArray would add a second chunking
to keep in sync and nothing the tile loop does not already do.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.engine.loop import BandSink, EngineStats, Log, Progress, TileJob
from geoseg.engine.workers import GeosegWorkerPlugin, worker_plugin
from geoseg.errors import ConfigError, GeosegError
from geoseg.pipeline import SegmentResult, segment

if TYPE_CHECKING:
    from distributed import Client

    from geoseg.engine.stitch import Band
    from geoseg.model import SegmentationModel

#: Finished bands of one block are held in memory until written; this caps a block's size.
DEFAULT_BLOCK_BYTES = 256 * 1024 * 1024


def infer_block(
    job: TileJob, rows: range, model_key: str, model: SegmentationModel
) -> tuple[list[Band], EngineStats]:
    """Worker task: the finished bands of tile rows ``rows`` (one halo tile row is added above)."""
    from geoseg.engine import loop  # looked up at call time, so that tests can replace it

    predictor = worker_plugin().predictor(model_key, model, job.inference)
    bands: list[Band] = []
    stats = loop.run_tile_rows(job, predictor, bands.append, rows=rows)
    return bands, stats


def rows_per_block(job: TileJob, n_workers: int, max_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Tile rows per block: one block per worker, fewer rows when a block's bands get too big.

    Each block costs one extra (halo) tile row of inference, so blocks are as large as memory
    allows; the output rows of one block take ``rows * width * (2 + classes if probabilities)``
    bytes while they wait to be written.
    """
    grid = job.grid
    nrows = len(grid.rows.starts) - job.first_row
    channels = 2 + (job.card.num_classes if job.probabilities else 0)
    stride = max(1, grid.rows.size - grid.rows.overlap)
    row_bytes = stride * grid.width * channels
    cap = max(1, max_bytes // max(1, row_bytes))
    return max(1, min(-(-nrows // max(1, n_workers)), cap))


@dataclass
class DaskEngine:
    """A :data:`geoseg.engine.loop.Engine` running blocks of tile rows as dask tasks.

    Args:
        client: a connected :class:`distributed.Client`.
        rows: tile rows per block (default: :func:`rows_per_block`).
        retries: how often dask re-runs a failed block before the run fails.
        in_flight: blocks submitted ahead of the one being written (default: 2 per worker).
    """

    client: Client
    rows: int | None = None
    retries: int = 2
    in_flight: int | None = None
    blocks_run: list[range] = field(default_factory=list)

    def __call__(
        self,
        job: TileJob,
        model: SegmentationModel,
        on_band: BandSink,
        on_tiles: Progress,
        say: Log,
    ) -> EngineStats:
        """Run ``job`` on the cluster, handing bands to ``on_band`` in row order."""
        client = self.client
        info = client.scheduler_info()
        n_workers = max(1, len(info["workers"]))
        nrows, ncols = len(job.grid.rows.starts), len(job.grid.cols.starts)
        per = self.rows or rows_per_block(job, n_workers)
        if per < 1:
            raise ConfigError(f"rows per block must be >= 1, got {per}")
        # A resumed run starts at job.first_row: the rows above it are written already.
        blocks = [range(a, min(a + per, nrows)) for a in range(job.first_row, nrows, per)]
        say(
            f"geoseg: dask: {n_workers} worker(s) at {info.get('address', '?')}; {len(blocks)} "
            f"block(s) of up to {per} tile row(s), each with 1 halo row"
        )
        model_future = client.scatter(model, broadcast=True, hash=False)
        stats = EngineStats(device="")
        devices: set[str] = set()
        todo = iter(blocks)
        window: deque[tuple[range, Any]] = deque()

        def submit_next() -> None:
            rows = next(todo, None)
            if rows is not None:
                future = client.submit(
                    infer_block, job, rows, model_future.key, model_future,
                    retries=self.retries, pure=False,
                )  # fmt: skip
                window.append((rows, future))

        for _ in range(self.in_flight or 2 * n_workers):
            submit_next()
        try:
            while window:
                rows, future = window.popleft()
                bands, block_stats = future.result()
                submit_next()
                t0 = time.perf_counter()
                for band in bands:
                    on_band(band)
                stats.stitch += time.perf_counter() - t0
                stats.merge(block_stats)
                devices.add(block_stats.device)
                self.blocks_run.append(rows)
                on_tiles(len(rows) * ncols)
        except BaseException:
            for _, future in window:
                future.cancel()
            raise
        finally:
            model_future.release()
        stats.device = f"dask[{', '.join(sorted(devices))}] x{n_workers} workers"
        return stats


def worker_threads(client: Client, torch_threads: int | None) -> int | dict[str, int]:
    """What each worker's plugin should do with torch threads (see :class:`GeosegWorkerPlugin`).

    An explicit count wins; otherwise each worker takes an equal share of its host's cores.
    """
    if torch_threads is not None:
        if torch_threads < 1:
            raise ConfigError(f"--torch-threads must be >= 1, got {torch_threads}")
        return torch_threads
    per_host: dict[str, int] = {}
    for info in client.scheduler_info()["workers"].values():
        host = str(info.get("host", ""))
        per_host[host] = per_host.get(host, 0) + 1
    return per_host


@contextmanager
def connect(
    client: Client | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    *,
    torch_threads: int | None = None,
    processes: bool = True,
    memory_limit: str | float | None = "auto",
) -> Iterator[Client]:
    """A client with geoseg's worker plugin registered: the given one, or a new connection.

    ``scheduler`` connects to a running cluster (``tcp://host:8786``); otherwise a
    :class:`distributed.LocalCluster` of ``n_workers`` single-threaded workers is started and shut
    down on exit. ``memory_limit`` is per worker (``"auto"``: the machine's memory split evenly).
    """
    from distributed import Client, LocalCluster

    given = sum(x is not None for x in (client, scheduler, n_workers))
    if given > 1:
        raise ConfigError("pass only one of a dask client, --dask-scheduler or --workers")
    if client is not None:
        client.register_plugin(GeosegWorkerPlugin(worker_threads(client, torch_threads)))
        yield client
        return
    if scheduler is not None:
        try:
            connected = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise GeosegError(
                f"cannot reach the dask scheduler at {scheduler} ({exc}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS`, or use --workers N"
            ) from exc
        with connected:
            connected.register_plugin(GeosegWorkerPlugin(worker_threads(connected, torch_threads)))
            yield connected
        return
    n = 2 if n_workers is None else n_workers
    if n < 1:
        raise ConfigError(f"--workers must be >= 1, got {n}")
    with (
        LocalCluster(
            n_workers=n, threads_per_worker=1, processes=processes, memory_limit=memory_limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as local,
    ):  # fmt: skip
        # In-process workers share this process's torch thread pool: leave it as it is.
        threads = worker_threads(local, torch_threads) if processes else torch_threads
        local.register_plugin(GeosegWorkerPlugin(threads))
        yield local


def segment_distributed(
    scene: str | Path,
    out_dir: str | Path | None = None,
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    rows: int | None = None,
    retries: int = 2,
    torch_threads: int | None = None,
    **options: Any,
) -> SegmentResult:
    """Segment one scene with its tile rows spread over dask workers; outputs as :func:`segment`.

    Args:
        scene: input raster, readable from every worker under this path.
        out_dir: output folder (written by this process).
        client: an existing :class:`distributed.Client`; or
        scheduler: the address of a running scheduler (``tcp://host:8786``); or
        n_workers: the size of a :class:`distributed.LocalCluster` to start (default 2).
        rows: tile rows per block (default: one block per worker, capped for memory).
        retries: how often dask re-runs a failed block.
        torch_threads: torch threads per worker (default: the host's cores / its workers).
        **options: any keyword argument of :func:`geoseg.segment` (model, tile_size, tta, ...).
    """
    if "engine" in options:
        raise ConfigError("segment_distributed chooses the engine itself; do not pass engine=")
    with connect(client, scheduler, n_workers, torch_threads=torch_threads) as connected:
        engine = DaskEngine(connected, rows=rows, retries=retries)
        return segment(scene, out_dir, engine=engine, **options)


@dataclass(frozen=True)
class SceneOutcome:
    """One scene of :func:`segment_many`: its result, or the error that stopped it."""

    scene: str
    result: SegmentResult | None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the scene was segmented."""
        return self.result is not None


def _segment_scene(
    scene: str, out_dir: str | None, model: SegmentationModel | None, options: dict[str, Any]
) -> SceneOutcome:
    """Worker task: one complete local ``segment``; geoseg errors are reported, not raised."""
    t0 = time.perf_counter()
    try:
        result = segment(scene, out_dir, model=model, **options)
    except GeosegError as exc:
        return SceneOutcome(scene, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
    return SceneOutcome(scene, result, None, time.perf_counter() - t0)


def segment_many(
    scenes: Sequence[str | Path],
    out_dirs: Sequence[str | Path | None] | None = None,
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    retries: int = 1,
    torch_threads: int | None = None,
    model: str | Path | SegmentationModel | None = None,
    log: Log | None = None,
    **options: Any,
) -> list[SceneOutcome]:
    """Segment many scenes, one dask task per scene, each into its own output folder.

    A scene that fails with a geoseg error (unreadable, wrong bands, output exists, ...) is
    reported in its :class:`SceneOutcome` and the others go on; other exceptions are retried by
    dask ``retries`` times and then raised. Outcomes are returned in the order of ``scenes``.

    Args:
        scenes: input rasters, readable from every worker.
        out_dirs: one output folder per scene (default: ``<scene>_geoseg`` next to each).
        client: an existing :class:`distributed.Client`; or
        scheduler: the address of a running scheduler; or
        n_workers: the size of a :class:`distributed.LocalCluster` to start (default 2).
        retries: how often dask re-runs a scene whose task failed unexpectedly.
        torch_threads: torch threads per worker (default: the host's cores / its workers).
        model: checkpoint path, loaded model or ``None`` (the default model); loaded once here
            and sent once to every worker.
        log: where to send one line per finished scene.
        **options: keyword arguments of :func:`geoseg.segment` (tile_size, overwrite, ...).
    """
    from distributed import as_completed

    from geoseg.model import SegmentationModel, load_model

    if "engine" in options or "progress" in options:
        raise ConfigError("segment_many runs each scene with the local engine and no progress bar")
    say: Log = log or (lambda _msg: None)
    names = [str(s) for s in scenes]
    targets = list(out_dirs) if out_dirs is not None else [None] * len(names)
    if len(targets) != len(names):
        raise ConfigError(f"{len(names)} scenes but {len(targets)} output folders")
    loaded = model if isinstance(model, SegmentationModel) else load_model(model)
    outcomes: dict[int, SceneOutcome] = {}
    with connect(client, scheduler, n_workers, torch_threads=torch_threads) as connected:
        model_future = connected.scatter(loaded, broadcast=True, hash=False)
        futures = {
            connected.submit(
                _segment_scene, scene, None if target is None else str(target), model_future,
                dict(options), retries=retries, pure=False,
            ): i
            for i, (scene, target) in enumerate(zip(names, targets, strict=True))
        }  # fmt: skip
        try:
            for future in as_completed(futures):
                outcome: SceneOutcome = future.result()
                outcomes[futures[future]] = outcome
                status = "ok" if outcome.ok else f"failed: {outcome.error}"
                say(f"geoseg: [{len(outcomes)}/{len(names)}] {outcome.scene}: {status}")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            model_future.release()
    return [outcomes[i] for i in range(len(names))]


def summary_table(outcomes: Sequence[SceneOutcome], wall: float | None = None) -> str:
    """A plain-text table of scenes, status, size, tiles, time and throughput."""
    header = ("scene", "status", "size (px)", "tiles", "seconds", "Mpx/s", "output")
    rows = []
    for o in outcomes:
        r = o.result
        if r is None:
            name = Path(o.scene).name
            rows.append((name, "FAILED", "", "", f"{o.seconds:.1f}", "", o.error or ""))
            continue
        seconds = r.timings.get("total", o.seconds)
        rows.append((
            Path(o.scene).name, "ok", f"{r.width}x{r.height}", str(r.tiles_total),
            f"{seconds:.1f}", f"{r.width * r.height / 1e6 / max(seconds, 1e-9):.2f}",
            str(r.out_dir),
        ))  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    done = sum(o.ok for o in outcomes)
    tail = f"{done}/{len(outcomes)} scene(s) segmented"
    if wall is not None:
        total_px = sum(o.result.width * o.result.height for o in outcomes if o.result is not None)
        tail += f" in {wall:.1f} s ({total_px / 1e6 / max(wall, 1e-9):.2f} Mpx/s overall)"
    lines.append(tail)
    return "\n".join(lines)


__all__ = [
    "DaskEngine",
    "GeosegWorkerPlugin",
    "SceneOutcome",
    "connect",
    "infer_block",
    "rows_per_block",
    "segment_distributed",
    "segment_many",
    "summary_table",
]
