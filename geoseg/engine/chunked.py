"""The tile loop as a dask graph over a chunked array: any output chunk, equal to ``segment()``.

``segment()`` runs one loop over the scene's tile grid: tiles are read and batched in raster
order, each batch goes through the model once, and the stitcher blends the probabilities tile row
by tile row. Here the same loop is cut into dask tasks, so that each chunk of the output can be
computed on its own, lazily, and still equal ``segment()``'s pixels bit for bit:

- one task per batch of the scene's *global* grid: tiles ``[b * batch_size, (b + 1) *
  batch_size)`` in raster order, the batches of ``segment()``. It reads its tiles from the input
  chunks they overlap, leaves all-nodata tiles out (:func:`~geoseg.engine.inference.read_batches`)
  and runs the model once. The batches must be the global ones, because some models' outputs change
  in the last bits with the batch (oneDNN picks other kernels for a batch of one): a chunk that
  batched its own tiles would not be bit-identical. So every tile runs through the model exactly
  once, whatever the chunking;
- one task per output chunk: it blends the tiles of the global grid that reach into the chunk (a
  halo of up to one tile around it) with the unchanged :class:`~geoseg.engine.stitch.Stitcher`, run
  over the sub-grid of those tiles (:func:`sub_grid`), and keeps the chunk's pixels.

Why the sub-grid gives the same bits: a tile's blend weights along an axis depend only on its two
neighbours (:func:`~geoseg.engine.stitch.axis_weights`), a pixel gets contributions from at most two
tiles per axis, and the stitcher adds them in an order fixed by the tiles' places in the grid.
Cutting the grid changes the weights and the additions only in the bands a sub-grid's outer
tiles share with the neighbours left out, and the halo is chosen so that those bands lie outside
the chunk.

The model travels as one graph key (a :class:`ModelSource`): under an active ``dask.distributed``
client it is scattered once to every worker when the graph is built, as the dask engine does, and
the graph holds a reference to it; on a worker the predictor comes from geoseg's worker plugin
(one per worker and model), as for :mod:`geoseg.distributed`.
"""

from __future__ import annotations

import bisect
import operator
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.engine.tiling import AxisLayout, TileGrid
from geoseg.io.read import valid_by_nodata
from geoseg.types import PixelWindow, Stretch, Tile

if TYPE_CHECKING:
    from geoseg.config import InferenceConfig
    from geoseg.engine.inference import Predictor
    from geoseg.model import ModelCard, SegmentationModel

#: A tile's blended inputs: ``(probabilities (K, th, tw) float32, valid (th, tw) bool)``, or
#: ``None`` for a tile left out as all nodata.
TileResult = tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True)
class ChunkedJob:
    """What the batch tasks need besides the model: the scene's grid, nodata and settings."""

    grid: TileGrid
    card: ModelCard
    inference: InferenceConfig
    nodata: float | None
    probabilities: bool
    stretch: Stretch | None = None  # scene values -> the model's (None: as they are)


class ModelSource:
    """The model and its job as one dask graph key; makes the predictor where the tasks run.

    Every batch task refers to the one key (scattered to the workers under a dask client, see
    :func:`_shared`), so the tasks of a worker share one copy. On a ``dask.distributed`` worker the
    predictor comes from geoseg's worker plugin (one per worker and model, torch threads as the
    plugin pins them); elsewhere (dask's threads) one predictor is made on first use, and forward
    passes run with the torch thread count of the caller, since a thread pool started earlier
    keeps its own and results compared pixel for pixel need the same count. Forward passes on one
    worker or process run one at a time: each uses all its torch threads, as in ``segment()``.
    """

    def __init__(self, model: SegmentationModel, job: ChunkedJob, model_key: str) -> None:
        import torch

        self.model = model
        self.job = job
        self.model_key = model_key
        self.threads = torch.get_num_threads()
        self._local()

    def _local(self) -> None:
        self._lock = threading.Lock()
        self._predictor: Predictor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("model", "job", "model_key", "threads")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local()

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K, H, W)`` for normalised inputs ``(N, C, H, W)``."""
        import torch

        with self._lock:
            predictor, threads = self._resolve()
            if threads and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)  # this thread's own count (OpenMP keeps one each)
            return predictor.predict(inputs)

    def _resolve(self) -> tuple[Predictor, int | None]:
        inf = self.job.inference
        if _on_dask_worker():
            from geoseg.engine.workers import worker_plugin  # the per-worker predictor cache

            plugin = worker_plugin()
            return plugin.predictor(self.model_key, self.model, inf), plugin.threads
        if self._predictor is None:
            from geoseg.engine.inference import Predictor

            self._predictor = Predictor(self.model, inf.device, inf.precision, tta=inf.tta)
        return self._predictor, self.threads


def _on_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


class ChunkReader:
    """:class:`~geoseg.io.read.TileReader`'s ``read`` over in-memory chunks of a (C, H, W) array.

    ``pieces`` are ``(window, chunk)`` pairs: where each chunk lies in the scene, and its pixels
    ``(C, h, w)`` in the scene's own dtype. Validity is the file pipeline's: no band equals
    ``nodata`` and, for float data, every band is finite.
    """

    def __init__(
        self,
        pieces: Sequence[tuple[PixelWindow, np.ndarray]],
        height: int,
        width: int,
        nodata: float | None,
    ) -> None:
        self.pieces = list(pieces)
        self.height, self.width = height, width
        self.nodata = nodata

    def read(self, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        """``window`` as float32 ``(C, H, W)`` and its validity ``(H, W)``; outside: 0, invalid."""
        first = self.pieces[0][1]
        data = np.zeros((first.shape[0], window.height, window.width), dtype=np.float32)
        valid = np.zeros(window.shape, dtype=bool)
        inside = window.intersection(PixelWindow(0, 0, self.height, self.width))
        if inside is None:
            return data, valid
        raw = np.empty((first.shape[0], inside.height, inside.width), dtype=first.dtype)
        for where, chunk in self.pieces:
            part = where.intersection(inside)
            if part is not None:
                rows, cols = part.relative_to(inside).slices()
                src_rows, src_cols = part.relative_to(where).slices()
                raw[:, rows, cols] = chunk[:, src_rows, src_cols]
        ok = valid_by_nodata(raw, self.nodata)
        if raw.dtype.kind == "f":
            finite = np.isfinite(raw)
            ok &= np.all(finite, axis=0)
            raw = np.where(finite, raw, 0)
        rows, cols = inside.relative_to(window).slices()
        data[:, rows, cols] = raw
        valid[rows, cols] = ok
        return data, valid


def infer_batch(
    source: ModelSource,
    tiles: Sequence[Tile],
    windows: Sequence[PixelWindow],
    chunks: Sequence[np.ndarray],
) -> list[TileResult]:
    """Task: one batch of the global grid, read from the input ``chunks`` lying at ``windows``."""
    from geoseg.engine.inference import Normaliser, read_batches

    job = source.job
    reader = ChunkReader(list(zip(windows, chunks, strict=True)), job.grid.height,
                         job.grid.width, job.nodata)  # fmt: skip
    normalise = Normaliser(job.card.mean, job.card.std, job.stretch)
    batch = next(read_batches(tiles, reader.read, normalise, len(tiles), threads=1))
    results: list[TileResult] = [None] * len(tiles)
    if batch.run:
        probs = source.predict(batch.inputs)
        for position, i in enumerate(batch.run):
            # a copy per tile, so that each is released once the chunks it reaches are blended
            results[i] = (probs[position].copy(), batch.valid[i])
    return results


def touching(layout: AxisLayout, start: int, stop: int) -> range:
    """The tiles along ``layout`` that contribute to pixels ``[start, stop)``.

    Tile ``i`` adds to the blend over ``[blend_starts[i], end(i))``; these are consecutive.
    """
    ends = [layout.end(i) for i in range(len(layout.starts))]
    return range(bisect.bisect_right(ends, start), bisect.bisect_left(layout.blend_starts, stop))


def sub_layout(layout: AxisLayout, tiles: range) -> AxisLayout:
    """Tiles ``tiles`` of ``layout`` alone, in pixel coordinates starting at the first one."""
    offset = layout.starts[tiles.start]
    return AxisLayout(
        length=layout.end(tiles.stop - 1) - offset,
        size=layout.size,
        overlap=layout.overlap,
        starts=tuple(s - offset for s in layout.starts[tiles.start : tiles.stop]),
        blend_starts=tuple(b - offset for b in layout.blend_starts[tiles.start : tiles.stop]),
    )


def sub_grid(grid: TileGrid, window: PixelWindow) -> tuple[TileGrid, range, range]:
    """The grid of the tiles that contribute to ``window``, with their tile rows and columns.

    Its pixel ``(0, 0)`` is the scene's ``(rows.starts[r0], cols.starts[c0])``. Over ``window``,
    stitching the sub-grid gives exactly the whole grid's pixels: the first and last tiles of the
    sub-grid blend differently only where they share pixels with a tile left out, and no tile left
    out reaches into ``window``.
    """
    rows = touching(grid.rows, window.row_off, window.row_end)
    cols = touching(grid.cols, window.col_off, window.col_end)
    return TileGrid(sub_layout(grid.rows, rows), sub_layout(grid.cols, cols)), rows, cols


def stitch_chunk(
    grid: TileGrid,
    window: PixelWindow,
    num_classes: int,
    probabilities: bool,
    results: Sequence[TileResult],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Task: blend the tiles of a sub-grid (in its raster order) and cut out ``window``.

    ``window`` is in the sub-grid's pixel coordinates. Returns ``classes`` and ``confidence``
    ``(h, w)`` and, when asked, ``probabilities`` ``(K, h, w)``, all uint8 as in
    :class:`~geoseg.engine.stitch.Band`.
    """
    from geoseg.engine.stitch import Stitcher

    stitcher = Stitcher(grid, num_classes, probabilities=probabilities)
    classes = np.empty(window.shape, dtype=np.uint8)
    confidence = np.empty(window.shape, dtype=np.uint8)
    probs = np.empty((num_classes, *window.shape), np.uint8) if probabilities else None
    cols = slice(window.col_off, window.col_end)
    for tile, result in zip(grid, results, strict=True):
        tile_probs, valid = result if result is not None else (None, None)
        for band in stitcher.add(tile, tile_probs, valid):
            top = max(band.row_off, window.row_off)
            bottom = min(band.row_off + band.height, window.row_end)
            if top >= bottom:
                continue
            src = slice(top - band.row_off, bottom - band.row_off)
            dst = slice(top - window.row_off, bottom - window.row_off)
            classes[dst] = band.classes[src, cols]
            confidence[dst] = band.confidence[src, cols]
            if probs is not None and band.probabilities is not None:
                probs[:, dst] = band.probabilities[:, src, cols]
    return classes, confidence, probs


def _offsets(chunks: Sequence[int]) -> list[int]:
    return [0, *np.cumsum(chunks).tolist()]


def segment_chunks(
    pixels: Any, model: SegmentationModel, job: ChunkedJob, model_key: str
) -> tuple[Any, Any, Any | None]:
    """Lazy ``classes``, ``confidence`` and (if the job asks) ``probabilities`` dask arrays.

    ``pixels`` is a ``(C, H, W)`` dask array of the bands the model takes (any chunks; the band
    axis is merged into one chunk); the outputs have its ``(H, W)`` chunks. Nothing is read or
    run until they are computed.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    pixels = pixels.rechunk({0: -1})
    grid = job.grid
    source = _shared(ModelSource(model, job, model_key))
    token = tokenize(pixels.name, model_key, job, getattr(source, "key", None))
    names = {k: f"geoseg-{k}-{token}" for k in ("model", "batch", "tile", "chunk")}
    source_key = (names["model"],)
    layer: dict[Any, Any] = {source_key: source}

    row_off, col_off = _offsets(pixels.chunks[1]), _offsets(pixels.chunks[2])
    tiles = list(grid)
    size = job.inference.batch_size
    for b in range(-(-len(tiles) // size)):
        batch = tiles[b * size : (b + 1) * size]
        blocks: dict[tuple[int, int], PixelWindow] = {}
        for tile in batch:
            blocks.update(_blocks(tile.valid_window, row_off, col_off))
        keys = [(pixels.name, 0, i, j) for i, j in blocks]
        layer[(names["batch"], b)] = (infer_batch, source_key, batch, list(blocks.values()), keys)
        for i, tile in enumerate(batch):
            layer[(names["tile"], tile.index)] = (operator.getitem, (names["batch"], b), i)

    ncols = len(grid.cols.starts)
    for i in range(len(row_off) - 1):
        for j in range(len(col_off) - 1):
            window = PixelWindow(row_off[i], col_off[j], row_off[i + 1] - row_off[i],
                                 col_off[j + 1] - col_off[j])  # fmt: skip
            sub, rows, cols = sub_grid(grid, window)
            local = window.relative_to(PixelWindow(grid.rows.starts[rows.start],
                                                   grid.cols.starts[cols.start], 0, 0))  # fmt: skip
            needed = [(names["tile"], r * ncols + c) for r in rows for c in cols]
            layer[(names["chunk"], i, j)] = (
                stitch_chunk, sub, local, job.card.num_classes, job.probabilities, needed
            )  # fmt: skip

    graph = HighLevelGraph.from_collections(names["chunk"], layer, dependencies=[pixels])
    chunks = pixels.chunks[1:]
    stitched = da.Array(graph, names["chunk"], chunks, meta=np.empty((0, 0), dtype=object))
    classes = _pick(stitched, 0, f"geoseg-classes-{token}")
    confidence = _pick(stitched, 1, f"geoseg-confidence-{token}")
    probabilities = None
    if job.probabilities:
        probabilities = _pick(stitched, 2, f"geoseg-probabilities-{token}", job.card.num_classes)
    return classes, confidence, probabilities


def _shared(source: ModelSource) -> Any:
    """What the graph holds for the model: a copy on every worker of an active dask client.

    Like the dask engine, the model is scattered once to every worker of the default
    ``dask.distributed`` client, and the graph holds only a reference to it (a large object inside
    a graph goes through the scheduler). Without a client, the graph holds the source itself, one
    key that every batch task shares.
    """
    distributed = sys.modules.get("distributed")  # no client can be active before its import
    if distributed is None:
        return source
    try:
        client = distributed.default_client()
    except ValueError:
        return source
    return client.scatter(source, broadcast=True, hash=False)


def _blocks(
    window: PixelWindow, row_off: Sequence[int], col_off: Sequence[int]
) -> dict[tuple[int, int], PixelWindow]:
    """The input chunks ``(i, j)`` that ``window`` overlaps, with where each lies in the scene."""
    first_i = bisect.bisect_right(row_off, window.row_off) - 1
    first_j = bisect.bisect_right(col_off, window.col_off) - 1
    out = {}
    for i in range(first_i, bisect.bisect_left(row_off, window.row_end)):
        for j in range(first_j, bisect.bisect_left(col_off, window.col_end)):
            out[(i, j)] = PixelWindow(row_off[i], col_off[j], row_off[i + 1] - row_off[i],
                                      col_off[j + 1] - col_off[j])  # fmt: skip
    return out


def _pick(stitched: Any, index: int, name: str, classes: int | None = None) -> Any:
    """The ``index``-th output of every stitched chunk, as a uint8 dask array."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    lead: tuple[int, ...] = () if classes is None else (0,)
    layer: dict[Any, Any] = {
        (name, *lead, i, j): (operator.getitem, (stitched.name, i, j), index)
        for i in range(len(stitched.chunks[0]))
        for j in range(len(stitched.chunks[1]))
    }
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[stitched])
    chunks = stitched.chunks if classes is None else ((classes,), *stitched.chunks)
    return da.Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), dtype=np.uint8))


__all__ = [
    "ChunkReader",
    "ChunkedJob",
    "ModelSource",
    "infer_batch",
    "segment_chunks",
    "stitch_chunk",
    "sub_grid",
    "sub_layout",
    "touching",
]
