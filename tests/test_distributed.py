"""The dask backend: block-wise runs equal the local engine; failures are retried by dask."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import geoseg
from geoseg.cli import main
from geoseg.config import InferenceConfig
from geoseg.distributed import (
    DaskEngine,
    connect,
    rows_per_block,
    segment_distributed,
    segment_many,
    summary_table,
)
from geoseg.engine import loop
from geoseg.engine.inference import Predictor
from geoseg.engine.tiling import make_grid
from geoseg.errors import ConfigError
from geoseg.types import Stretch
from tests.conftest import DATA, ClassReference, assert_classes_agree, recorded_margins

distributed = pytest.importorskip("distributed")
torch = pytest.importorskip("torch")

SAMPLE = Path(geoseg.__file__).parent / "data" / "sample" / "naip_rgbn_2016.tif"


def small_unet(seed: int = 0):
    """A small smp U-Net: a receptive field far wider than the overlap, so blending matters."""
    from geoseg.model import ModelCard, build_model
    from geoseg.types import ClassTable

    torch.manual_seed(seed)
    card = ModelCard(
        arch="unet",
        encoder="resnet18",
        bands=("red", "green", "blue"),
        mean=(110.0, 110.0, 100.0),
        std=(50.0, 50.0, 50.0),
        classes=ClassTable.default(5),
        tile_size=128,
        arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    )
    return build_model(card)


@pytest.fixture(scope="module")
def model():
    return small_unet()


@pytest.fixture(scope="module")
def client():
    """Two in-process workers (threads): fast to start, and monkeypatching reaches them."""
    threads = torch.get_num_threads()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c
    torch.set_num_threads(threads)


def read_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def local_run(scene, out, model, **kw):
    kw.setdefault("vectorize", False)
    kw.setdefault("preview", False)
    return geoseg.segment(scene, out, model=model, **kw)


def local_reference(scene, out, model, **kw):
    """A local run, and its classes with the float top-two margin of each pixel."""
    with rasterio.open(scene) as ds:
        height, width = ds.height, ds.width
    with recorded_margins(height, width) as margin:
        result = local_run(scene, out, model, **kw)
    return result, ClassReference(read_all(result.classes_path)[0], margin)


def assert_equals_local(result, local, reference):
    """The outputs of a distributed run equal those of a local run, up to float32 ties.

    Workers run the model on other threads (or processes) with their own torch thread count, so
    their float32 sums may differ from the local run's in the last bits: classes are compared
    wherever the local run is clear of a tie, confidence and probabilities within one level.
    """
    assert_classes_agree(read_all(result.classes_path)[0], reference)
    for name in ("confidence_path", "probabilities_path"):
        mine, ref = getattr(result, name), getattr(local, name)
        assert (mine is None) == (ref is None), name
        if ref is not None:
            levels = np.abs(read_all(mine).astype(int) - read_all(ref).astype(int))
            assert levels.max() <= 1, name


@pytest.fixture(scope="module")
def local_sample(tmp_path_factory, model):
    """The local engine's outputs for the shipped NAIP sample, and its class reference."""
    out = tmp_path_factory.mktemp("local") / "out"
    return local_reference(SAMPLE, out, model, tile_size=128, overlap=32, probabilities=True)


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 330 x 390 px window of the NAIP sample (keeps the block-level tests quick)."""
    path = tmp_path_factory.mktemp("crop") / "crop.tif"
    with rasterio.open(SAMPLE) as src:
        window = rasterio.windows.Window(200, 150, 390, 330)
        profile = src.profile | {
            "width": 390, "height": 330, "transform": src.window_transform(window),
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


def job_for(scene: Path, model, tile: int, overlap: int, probabilities: bool = True):
    with rasterio.open(scene) as ds:
        grid = make_grid(ds.height, ds.width, tile, overlap, multiple=model.card.output_stride)
    return loop.TileJob(
        str(scene), (1, 2, 3), grid, model.card, InferenceConfig(batch_size=3), probabilities
    )


@pytest.mark.parametrize(
    ("tile", "overlap", "splits"),
    [(96, 32, [1, 3]), (128, 64, [1, 2, 3, 4]), (64, 16, [5])],
)
def test_row_blocks_with_halo_equal_the_whole_scene(model, crop, tile, overlap, splits):
    """The halo row makes each block's bands bit-identical to the same rows of a full run.

    The last tile row is shifted to end at the scene edge (330 is not on the tile stride), so
    the irregular last blend is covered too. Compared exactly: one predictor on this thread runs
    the same batches of tiles as the full run, so the arithmetic is the same.
    """
    job = job_for(crop, model, tile, overlap)
    predictor = Predictor(model, "cpu")
    whole: list = []
    loop.run_tile_rows(job, predictor, whole.append)
    nrows = len(job.grid.rows.starts)
    bounds = [0, *splits, nrows]
    parts: list = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        block: list = []
        stats = loop.run_tile_rows(job, predictor, block.append, rows=range(a, b))
        assert [band.row_off for band in block] == [band.row_off for band in whole[a:b]]
        # the block's rows and its halo row, plus what completes the first and last batches
        needed = (b - max(a - 1, 0)) * len(job.grid.cols.starts)
        assert needed <= stats.tiles_run <= needed + 2 * (job.inference.batch_size - 1)
        parts += block
    assert len(parts) == len(whole) == nrows > splits[-1]
    for mine, ref in zip(parts, whole, strict=True):
        np.testing.assert_array_equal(mine.classes, ref.classes)
        np.testing.assert_array_equal(mine.confidence, ref.confidence)
        np.testing.assert_array_equal(mine.probabilities, ref.probabilities)
    classes = np.concatenate([band.classes for band in whole])
    assert classes.shape == (job.grid.height, job.grid.width)
    assert len(np.unique(classes)) >= 3


def test_block_without_halo_predictions_would_differ(model, crop):
    """Control for the test above: without the halo row's predictions a block's top differs."""
    from geoseg.engine.inference import Normaliser
    from geoseg.engine.stitch import Stitcher
    from geoseg.io.read import TileReader

    job = job_for(crop, model, 96, 32)
    predictor = Predictor(model, "cpu")
    whole: list = []
    loop.run_tile_rows(job, predictor, whole.append)
    stitcher = Stitcher(job.grid, model.card.num_classes, probabilities=True, first_row=3)
    normalise = Normaliser(model.card.mean, model.card.std)
    bands: list = []
    with TileReader(crop, (1, 2, 3)) as reader:
        for r in (2, 3):
            for c in range(len(job.grid.cols.starts)):
                tile = job.grid.tile(r, c)
                if r == 2:  # the halo row, dropped
                    bands += list(stitcher.add(tile, None, None))
                    continue
                data, valid = reader.read(tile.read_window)
                probs = predictor.predict(normalise(data, valid)[None])[0]
                bands += list(stitcher.add(tile, probs, valid))
    assert len(bands) == 1 and bands[0].row_off == whole[3].row_off
    assert not np.array_equal(bands[0].probabilities, whole[3].probabilities)


def test_distributed_equals_local_on_a_real_scene(client, model, local_sample, tmp_path):
    engine_log: list[str] = []
    result = segment_distributed(
        SAMPLE, tmp_path / "dist", client=client, rows=2, model=model, tile_size=128,
        overlap=32, probabilities=True, vectorize=False, preview=False, log=engine_log.append,
    )  # fmt: skip
    assert "dask" in result.device and "cpu" in result.device
    assert any("4 block(s)" in line for line in engine_log), engine_log
    local, reference = local_sample
    assert_equals_local(result, local, reference)
    for name in ("classes_path", "confidence_path", "probabilities_path"):
        local_path, dist_path = getattr(local, name), getattr(result, name)
        with rasterio.open(local_path) as a, rasterio.open(dist_path) as b:
            assert (a.crs, a.transform, a.profile["blockxsize"]) == (
                b.crs, b.transform, b.profile["blockxsize"],
            )  # fmt: skip
            assert a.overviews(1) == b.overviews(1)
            assert a.colorinterp == b.colorinterp
    assert result.tiles_total == local.tiles_total
    assert len(np.unique(read_all(result.classes_path))) >= 3


def test_distributed_landsat_scene_with_nodata(client, model, tmp_path):
    """RGB.byte.tif (real Landsat, nodata collar with whole nodata tiles): same as local."""
    scene = DATA / "RGB.byte.tif"
    local, reference = local_reference(scene, tmp_path / "local", model, tile_size=128, overlap=32)
    dist = segment_distributed(
        scene, tmp_path / "dist", client=client, rows=3, model=model, tile_size=128,
        overlap=32, vectorize=False, preview=False,
    )  # fmt: skip
    assert_equals_local(dist, local, reference)
    assert dist.tiles_skipped == local.tiles_skipped > 0


def test_distributed_blocks_use_the_stretch_chosen_on_the_client(
    client, model, crop, tmp_path, monkeypatch
):
    """A uint16 scene for a uint8 model: LO/HI are chosen once and travel with every block."""
    counts = tmp_path / "counts.tif"
    with rasterio.open(crop) as src:
        pixels = src.read().astype(np.uint16) * 8 + 50
        profile = src.profile | {"dtype": "uint16", "nodata": None}
    with rasterio.open(counts, "w", **profile) as dst:
        dst.write(pixels)
    local, reference = local_reference(counts, tmp_path / "local", model, tile_size=128, overlap=32)
    blocks: list[Stretch | None] = []
    real = loop.run_tile_rows

    def recording(job, *args, **kwargs):
        blocks.append(job.stretch)
        return real(job, *args, **kwargs)

    monkeypatch.setattr(loop, "run_tile_rows", recording)
    dist = segment_distributed(
        counts, tmp_path / "dist", client=client, rows=1, model=model, tile_size=128,
        overlap=32, vectorize=False, preview=False,
    )  # fmt: skip
    assert_equals_local(dist, local, reference)
    local_json, dist_json = (json.loads((r.out_dir / "run.json").read_text())["settings"]
                             for r in (local, dist))  # fmt: skip
    assert local_json["stretch"] == dist_json["stretch"]
    assert dist_json["stretch"]["rule"] == "matched"
    assert len(blocks) == dist.tiles_total // 4  # one block per tile row (4 tiles a row)
    assert set(blocks) == {Stretch.from_dict(dist_json["stretch"])}


def test_failed_block_is_retried_by_dask(client, model, local_sample, tmp_path, monkeypatch):
    calls: dict[int, int] = {}
    lock = threading.Lock()
    real = loop.run_tile_rows

    def flaky(job, predictor, on_band, *, rows=None, on_tiles=None):
        with lock:
            calls[rows.start] = calls.get(rows.start, 0) + 1
            first = calls[rows.start] == 1
        if rows.start == 2 and first:
            raise OSError("worker lost its scratch disk (injected)")
        return real(job, predictor, on_band, rows=rows, on_tiles=on_tiles)

    monkeypatch.setattr(loop, "run_tile_rows", flaky)
    result = segment_distributed(
        SAMPLE, tmp_path / "dist", client=client, rows=2, retries=1, model=model, tile_size=128,
        overlap=32, probabilities=True, vectorize=False, preview=False,
    )  # fmt: skip
    assert calls[2] == 2 and calls[0] == calls[4] == 1
    assert_equals_local(result, *local_sample)


def test_failed_block_without_retries_fails_cleanly(client, model, tmp_path, monkeypatch):
    def broken(job, predictor, on_band, *, rows=None, on_tiles=None):
        raise OSError("injected failure")

    monkeypatch.setattr(loop, "run_tile_rows", broken)
    with pytest.raises(OSError, match="injected failure"):
        segment_distributed(
            SAMPLE, tmp_path / "dist", client=client, rows=2, retries=0, model=model,
            tile_size=128, overlap=32, vectorize=False, preview=False,
        )  # fmt: skip
    assert not (tmp_path / "dist").exists()
    assert not list(tmp_path.glob(".dist.tmp-*"))


def test_rows_per_block_fills_workers_and_caps_memory(model):
    job = job_for(SAMPLE, model, 128, 32, probabilities=False)
    nrows = len(job.grid.rows.starts)
    assert rows_per_block(job, 1) == nrows
    assert rows_per_block(job, 2) == -(-nrows // 2)
    row_bytes = 96 * job.grid.width * 2
    assert rows_per_block(job, 1, max_bytes=3 * row_bytes) == 3
    assert rows_per_block(job, 1, max_bytes=1) == 1


def test_connect_refuses_two_cluster_choices(client):
    with pytest.raises(ConfigError, match="only one of"):
        with connect(client, n_workers=2):
            pass


def test_engine_refuses_bad_rows(client, model, tmp_path):
    with pytest.raises(ConfigError, match="rows per block"):
        geoseg.segment(
            SAMPLE, tmp_path / "out", model=model, tile_size=128, vectorize=False,
            engine=DaskEngine(client, rows=-1),
        )  # fmt: skip


def test_many_scenes_across_workers(client, model, local_sample, crop, tmp_path):
    """Each scene gets its own folder equal to a local run; a bad scene fails alone."""
    missing = tmp_path / "missing.tif"
    scenes = [SAMPLE, crop, missing]
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    lines: list[str] = []
    outcomes = segment_many(
        scenes, outs, client=client, model=model, tile_size=128, overlap=32,
        probabilities=True, vectorize=False, preview=False, log=lines.append,
    )  # fmt: skip
    assert [o.ok for o in outcomes] == [True, True, False]
    assert "does not exist" in (outcomes[2].error or "")
    assert_classes_agree(read_all(outcomes[0].result.classes_path)[0], local_sample[1])
    _, crop_reference = local_reference(
        crop, tmp_path / "crop_local", model, tile_size=128, overlap=32
    )
    assert_classes_agree(read_all(outcomes[1].result.classes_path)[0], crop_reference)
    assert len(lines) == 3
    table = summary_table(outcomes, wall=12.5)
    assert "naip_rgbn_2016.tif" in table and "crop.tif" in table and "FAILED" in table
    assert "2/3 scene(s) segmented in 12.5 s" in table


def test_cli_scheduler_address_with_glob_and_list(client, tiny_checkpoint, make_raster, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(2):
        make_raster(height=140, width=150, seed=i, name=f"scenes/s{i}.tif")
    listing = tmp_path / "list.txt"
    listing.write_text("# two scenes\nscenes/s0.tif\n\nscenes/s1.tif\n")
    address = client.scheduler.address
    for arg, out in ((str(scenes / "*.tif"), "glob"), (f"@{listing}", "list")):
        result = CliRunner().invoke(
            main,
            ["run", arg, "--dask-scheduler", address, "-m", str(tiny_checkpoint), "-o",
             str(tmp_path / out), "--no-vector", "--no-preview", "--tile-size", "64",
             "--overlap", "16"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "2/2 scene(s) segmented" in result.output
        assert {p.name for p in (tmp_path / out).iterdir()} == {"s0_geoseg", "s1_geoseg"}
        assert (tmp_path / out / "s1_geoseg" / "classes.tif").exists()


def test_cli_rejects_empty_glob_and_missing_list(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(tmp_path / "*.tif")])
    assert result.exit_code == 2 and "no file matches" in result.output
    result = runner.invoke(main, ["run", f"@{tmp_path / 'nope.txt'}"])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.slow
def test_cli_local_cluster_of_worker_processes(tiny_checkpoint, make_raster, tmp_path):
    """``--workers 2``: real worker processes (torch threads pinned per worker), two scenes."""
    a = make_raster(height=140, width=150, seed=1, name="a.tif")
    b = make_raster(height=120, width=170, seed=2, name="b.tif")
    result = CliRunner().invoke(
        main,
        ["run", str(a), str(b), "--workers", "2", "-m", str(tiny_checkpoint), "-o",
         str(tmp_path / "out"), "--no-vector", "--no-preview", "--tile-size", "64",
         "--overlap", "16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2/2 scene(s) segmented" in result.output
    for name in ("a", "b"):
        _, reference = local_reference(
            tmp_path / f"{name}.tif", tmp_path / f"{name}_local", str(tiny_checkpoint),
            tile_size=64, overlap=16,
        )  # fmt: skip
        classes = read_all(tmp_path / "out" / f"{name}_geoseg" / "classes.tif")[0]
        assert_classes_agree(classes, reference)  # worker processes: other thread counts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_worker_runs_blocks_on_cuda(client, model, tmp_path):
    result = segment_distributed(
        SAMPLE, tmp_path / "gpu", client=client, rows=2, model=model, tile_size=128,
        overlap=32, device="auto", vectorize=False, preview=False,
    )  # fmt: skip
    assert "cuda" in result.device
