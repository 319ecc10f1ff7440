"""Reading scenes at the model's pixel size (geoseg.io.grid) and bringing outputs back."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject

import geoseg
from geoseg.cli import main
from geoseg.engine.journal import JOURNAL_NAME, JournalState, partial_dir
from geoseg.engine.regrid import Regridder, first_grid_row
from geoseg.engine.stitch import NODATA_CLASS, PROBABILITY_SCALE, Band
from geoseg.errors import InputError, ResolutionWarning, ResumeError
from geoseg.io.grid import (
    MAX_AUTO_UPSAMPLING,
    ReadGrid,
    auto_gsd,
    plan_read,
    scene_gsd,
)
from geoseg.io.read import TileReader, open_raster, scene_info
from geoseg.model import SegmentationModel
from geoseg.types import PixelWindow
from tests.conftest import conv_model, write_raster
from tests.engine.test_journal import interrupt_after

SAMPLE = Path(geoseg.__file__).parent / "data" / "sample" / "naip_rgbn_2016.tif"
OHIO = Path(__file__).parents[1] / "data" / "ohio" / "val"
RANGE = (0.4, 1.5)


def ranged_model(gsd_range=RANGE, seed=0) -> SegmentationModel:
    """The test conv net with a training GSD range in its card."""
    model = conv_model(3, 4, seed=seed)
    return SegmentationModel(model.module, dataclasses.replace(model.card, gsd_range=gsd_range))


def info_of(path):
    with open_raster(path) as ds:
        return scene_info(ds)


def read_all(path):
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def five_metre(tmp_path_factory) -> Path:
    """A 120 x 100 px window of the 5 m NAIP sample, RGB, with a nodata corner."""
    path = tmp_path_factory.mktemp("five") / "five.tif"
    with rasterio.open(SAMPLE) as src:
        window = rasterio.windows.Window(300, 200, 120, 100)
        data = src.read([1, 2, 3], window=window)
        transform = src.window_transform(window)
        crs = src.crs
    data[:, :20, :30] = 0
    return write_raster(path, data, crs=crs.to_string(), transform=transform, nodata=0)


@pytest.fixture(scope="module")
def point_three(tmp_path_factory) -> Path:
    """An Ohio NAIP tile (0.6 m) resampled to 0.3 m: 512 x 512 px of RGB."""
    src_path = sorted((OHIO / "img").glob("tile_*.tif"))[0]
    path = tmp_path_factory.mktemp("fine") / "fine.tif"
    with rasterio.open(src_path) as src:
        data = src.read([1, 2, 3], out_shape=(3, 512, 512), resampling=Resampling.bilinear)
        transform = src.transform @ src.transform.scale(0.5, 0.5)
        crs = src.crs
    return write_raster(path, data, crs=crs.to_string(), transform=transform)


@pytest.fixture(scope="module")
def geographic(tmp_path_factory, five_metre) -> Path:
    """The 5 m window warped to EPSG:4326 (about 5 m at its centre), nodata outside."""
    path = tmp_path_factory.mktemp("geo") / "geo.tif"
    with rasterio.open(five_metre) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        data = np.zeros((3, height, width), np.uint8)
        for b in range(3):
            reproject(
                src.read(b + 1), data[b], src_transform=src.transform, src_crs=src.crs,
                dst_transform=transform, dst_crs="EPSG:4326", src_nodata=0, dst_nodata=0,
                resampling=Resampling.nearest,
            )  # fmt: skip
    return write_raster(path, data, crs="EPSG:4326", transform=transform, nodata=0)


def run(scene, out, model, **kw):
    kw = {"vectorize": False, "preview": False, "tile_size": 64, "overlap": 16, **kw}
    return geoseg.segment(scene, out, model=model, **kw)


# -- the ground sample distance ---------------------------------------------------------------


def test_scene_gsd_in_metres_for_projected_feet_and_geographic_crs(tmp_path):
    data = np.zeros((1, 10, 10), np.uint8)
    metres = write_raster(tmp_path / "m.tif", data, transform=from_origin(5e5, 5.3e6, 2, 2))
    feet = write_raster(
        tmp_path / "ft.tif", data, crs="EPSG:2263", transform=from_origin(9e5, 2e5, 1, 1)
    )
    geo = write_raster(
        tmp_path / "g.tif", data, crs="EPSG:4326", transform=from_origin(10, 60.00005, 1e-5, 1e-5)
    )
    assert scene_gsd(info_of(metres)) == pytest.approx(2.0)
    assert scene_gsd(info_of(feet)) == pytest.approx(0.3048006, rel=1e-6)
    # at 60 degrees north a degree of longitude is half a degree of latitude
    lat_m = 1e-5 * np.pi / 180 * 6_371_008.8
    assert scene_gsd(info_of(geo)) == pytest.approx((lat_m + lat_m * 0.5) / 2, rel=1e-3)
    plain = write_raster(tmp_path / "p.tif", data, crs=None, transform=from_origin(0, 10, 1, 1))
    assert scene_gsd(info_of(plain)) is None


def test_auto_reads_at_the_nearest_pixel_size_inside_the_models_range():
    assert auto_gsd(5.0, RANGE) == 1.5
    assert auto_gsd(0.05, RANGE) == 0.4
    assert auto_gsd(0.6, RANGE) == 0.6


def test_plan_read_follows_the_mode(five_metre, point_three):
    model = ranged_model()
    info = info_of(five_metre)
    auto = plan_read(info, model.card, "auto")  # coarser than the range: read as it is
    assert not auto.resampled and auto.scene_gsd == pytest.approx(5.0)
    assert "--resolution 1.5" in auto.note
    coarse = plan_read(info, model.card, 1.5)
    assert coarse.resampled and coarse.gsd == 1.5
    assert (coarse.height, coarse.width) == (round(100 * 5 / 1.5), round(120 * 5 / 1.5))
    assert not plan_read(info, model.card, "native").resampled
    metres = plan_read(info, model.card, 2.5)
    assert (metres.height, metres.width) == (200, 240) and metres.scale == (2.0, 2.0)
    fine = plan_read(info_of(point_three), model.card, "auto")
    assert fine.gsd == 0.4 and (fine.height, fine.width) == (384, 384)
    # inside the range, or a model without one: the scene's own grid
    assert not plan_read(info, ranged_model((0.5, 6.0)).card, "auto").resampled
    assert not plan_read(info, conv_model(3, 4).card, "auto").resampled


def test_auto_does_not_upsample_coarser_scenes_and_warns(make_raster, tmp_path):
    model = ranged_model()
    scene = make_raster(height=40, width=40)  # 10 m pixels: 6.7x coarser than 1.5 m
    grid = plan_read(info_of(scene), model.card, "auto")
    assert not grid.resampled and 10 / 1.5 > MAX_AUTO_UPSAMPLING
    assert "--resolution 1.5" in grid.note
    with pytest.warns(ResolutionWarning, match="outside the 0.4-1.5 m.*does not up-sample"):
        result = run(scene, tmp_path / "out", model)
    assert read_all(result.classes_path).shape == (1, 40, 40)
    warned = json.loads((result.out_dir / "run.json").read_text())["warnings"]
    assert [w["category"] for w in warned] == ["ResolutionWarning"]
    assert "outside the 0.4-1.5 m" in warned[0]["message"]


def test_a_pixel_size_for_an_ungeoreferenced_scene_is_refused(tmp_path):
    data = np.zeros((3, 20, 20), np.uint8)
    plain = write_raster(tmp_path / "p.tif", data, crs=None, transform=from_origin(0, 20, 1, 1))
    with pytest.raises(InputError, match="--resolution native"):
        plan_read(info_of(plain), ranged_model().card, 0.5)
    assert not plan_read(info_of(plain), ranged_model().card, "auto").resampled


# -- reading tiles on a resampled grid ---------------------------------------------------------


@pytest.mark.parametrize("target", [1.5, 7.0])
def test_tiles_on_a_resampled_grid_equal_the_whole_resampled_scene(five_metre, target):
    info = info_of(five_metre)
    grid = plan_read(info, ranged_model().card, target)
    kind = Resampling.bilinear if grid.scale[0] >= 1 else Resampling.average
    with rasterio.open(five_metre) as ds:
        whole = ds.read(out_shape=(3, grid.height, grid.width), resampling=kind)
        whole_mask = ds.read_masks(
            out_shape=(3, grid.height, grid.width), resampling=Resampling.nearest
        )
    with TileReader(five_metre, [1, 2, 3], grid) as reader:
        assert (reader.height, reader.width) == (grid.height, grid.width)
        for window in [PixelWindow(0, 0, 64, 64), PixelWindow(37, 51, 64, 80)]:
            data, valid = reader.read(window)
            inside = window.intersection(PixelWindow(0, 0, grid.height, grid.width))
            rows, cols = inside.relative_to(window).slices()
            r, c = inside.slices()
            diff = np.abs(data[:, rows, cols] - whole[:, r, c])
            if grid.scale[0] >= 1:  # bilinear over floating-point windows: exact
                assert diff.max() == 0
            else:  # GDAL's average rounds the footprint of a window's edge pixels: 1 DN at most
                assert diff.max() <= 1 and (diff > 0).mean() < 0.005
            np.testing.assert_array_equal(valid[rows, cols], np.all(whole_mask[:, r, c] > 0, 0))
            outside = np.ones(window.shape, bool)
            outside[rows, cols] = False
            assert not valid[outside].any()


# -- bringing results back -----------------------------------------------------------------------


def grid_bands(probs: np.ndarray, valid: np.ndarray, cuts: list[int]) -> list[Band]:
    """Bands of grid rows split at ``cuts``, as the stitcher hands them on."""
    scaled = np.rint(probs * PROBABILITY_SCALE).astype(np.uint8)
    classes = np.where(valid, probs.argmax(0), NODATA_CLASS).astype(np.uint8)
    edges = [0, *cuts, probs.shape[1]]
    return [
        Band(a, classes[a:b], np.full_like(classes[a:b], 200), scaled[:, a:b])
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def regrid(grid, bands, scene_valid, first_row=0):
    out: list[Band] = []
    regridder = Regridder(
        grid, 3, out.append, lambda r, h: scene_valid[r : r + h], probabilities=True,
        first_row=first_row,
    )  # fmt: skip
    for band in bands:
        regridder.add(band)
    return out


@pytest.mark.parametrize("shape", [(23, 31), (77, 90)])
def test_regridding_is_the_same_whatever_the_bands(shape):
    rng = np.random.default_rng(1)
    grid = ReadGrid(shape[0], shape[1], 50, 60)
    probs = rng.dirichlet([1, 1, 1], size=shape).transpose(2, 0, 1).astype(np.float32)
    valid = rng.random(shape) > 0.05
    scene_valid = np.ones((50, 60), bool)
    scene_valid[:5, :7] = False
    whole = regrid(grid, grid_bands(probs, valid, []), scene_valid)
    split = regrid(grid, grid_bands(probs, valid, [1, 2, 9, shape[0] // 2]), scene_valid)
    assert [b.row_off for b in split][0] == 0
    for name in ("classes", "confidence", "probabilities"):
        a = np.concatenate([getattr(b, name) for b in whole], axis=-2)
        b = np.concatenate([getattr(b, name) for b in split], axis=-2)
        assert a.shape[-2:] == (50, 60)
        np.testing.assert_array_equal(a, b, err_msg=name)
    classes = np.concatenate([b.classes for b in whole])
    assert (classes[:5, :7] == NODATA_CLASS).all()
    # a resumed run: bands from the one holding the first grid row that scene row 20 needs
    start = first_grid_row(grid, 20)
    cut = [b for b in grid_bands(probs, valid, [start]) if b.row_off >= start]
    resumed = regrid(grid, cut, scene_valid, first_row=20)
    np.testing.assert_array_equal(np.concatenate([b.classes for b in resumed]), classes[20:])


def test_regridding_keeps_constant_probabilities_and_the_scene_nodata():
    grid = ReadGrid(10, 12, 37, 41)
    probs = np.zeros((3, 10, 12), np.float32)
    probs[1] = 0.7
    probs[0] = probs[2] = 0.15
    valid = np.ones((10, 12), bool)
    scene_valid = np.ones((37, 41), bool)
    scene_valid[30:, 35:] = False
    (band,) = regrid(grid, grid_bands(probs, valid, []), scene_valid)
    assert (band.classes[scene_valid] == 1).all()
    assert (band.classes[~scene_valid] == NODATA_CLASS).all()
    stored = round(0.7 * PROBABILITY_SCALE) / PROBABILITY_SCALE  # as the stitcher hands it on
    assert (band.confidence[scene_valid] == round(stored * 255)).all()


# -- whole runs on real scenes -------------------------------------------------------------------


def assert_on_grid_of(result, scene, count=1):
    with rasterio.open(scene) as src, rasterio.open(result.classes_path) as out:
        assert out.crs == src.crs
        assert out.transform.almost_equals(src.transform, precision=1e-12)
        assert (out.height, out.width, out.count) == (src.height, src.width, count)
        scene_valid = np.all(src.read_masks([1, 2, 3]) > 0, axis=0)
        classes = out.read(1)
    np.testing.assert_array_equal(classes == NODATA_CLASS, ~scene_valid)
    return classes


def test_a_5m_scene_runs_at_the_models_resolution_on_its_own_grid(
    five_metre, tmp_path, one_torch_thread
):
    model = ranged_model()
    logs: list[str] = []
    result = run(
        five_metre, tmp_path / "coarse", model, probabilities=True, log=logs.append, resolution=1.5
    )
    assert any("read at 1.5 m instead of 5 m" in line for line in logs)
    classes = assert_on_grid_of(result, five_metre)
    assert len(np.unique(classes[classes != NODATA_CLASS])) > 1
    with rasterio.open(result.probabilities_path) as ds:
        assert (ds.count, ds.height, ds.width) == (4, 100, 120)
    settings = json.loads((result.out_dir / "run.json").read_text())["settings"]
    assert settings["resolution"] == 1.5 and settings["read_gsd"] == 1.5
    assert settings["read_grid"] == [333, 400] and settings["scene_gsd"] == pytest.approx(5.0)
    with pytest.warns(ResolutionWarning):
        native = run(five_metre, tmp_path / "auto", model)
    assert result.tiles_total > native.tiles_total


def test_native_keeps_todays_behaviour(five_metre, tmp_path, one_torch_thread):
    with pytest.warns(ResolutionWarning, match="--resolution native was asked"):
        native = run(five_metre, tmp_path / "native", ranged_model(), resolution="native")
    today = run(five_metre, tmp_path / "today", conv_model(3, 4))  # a card without a range
    for name in ("classes", "confidence"):
        np.testing.assert_array_equal(
            read_all(native.out_dir / f"{name}.tif"), read_all(today.out_dir / f"{name}.tif")
        )


def test_a_0_3m_scene_is_read_coarser(point_three, tmp_path, one_torch_thread):
    logs: list[str] = []
    result = run(point_three, tmp_path / "fine", ranged_model(), log=logs.append)
    assert any("read at 0.4 m instead of 0.3 m (512x512 -> 384x384 px)" in x for x in logs)
    assert_on_grid_of(result, point_three)


def test_a_geographic_scene_is_measured_in_metres(geographic, tmp_path, one_torch_thread):
    info = info_of(geographic)
    assert scene_gsd(info) == pytest.approx(5.0, rel=0.1)
    assert plan_read(info, ranged_model().card, 1.5).resampled
    result = run(geographic, tmp_path / "geo", ranged_model(), resolution=1.5)
    assert_on_grid_of(result, geographic)


def test_resume_at_a_changed_resolution_is_identical(five_metre, tmp_path, one_torch_thread):
    model = ranged_model()
    kw = {"batch_size": 2, "resolution": 1.5}
    kw["config"] = geoseg.RunConfig().replace(output={"block_size": 16})
    expected = run(five_metre, tmp_path / "ref", model, probabilities=True, **kw)
    out = tmp_path / "out"
    restore = interrupt_after(model, 14)
    with pytest.raises(KeyboardInterrupt):
        run(five_metre, out, model, probabilities=True, **kw)
    restore()
    rows = JournalState.read(partial_dir(out) / JOURNAL_NAME).rows_done
    assert 0 < rows < 100
    with pytest.raises(ResumeError, match="read_gsd"):
        run(five_metre, out, model, probabilities=True, resume=True, **(kw | {"resolution": 2.0}))
    resumed = run(five_metre, out, model, probabilities=True, resume=True, **kw)
    for name in ("classes", "confidence", "probabilities"):
        np.testing.assert_array_equal(
            read_all(resumed.out_dir / f"{name}.tif"), read_all(expected.out_dir / f"{name}.tif")
        )


def test_the_dask_engine_gives_the_same_outputs_at_a_changed_resolution(five_metre, tmp_path):
    distributed = pytest.importorskip("distributed")
    from geoseg.distributed import segment_distributed

    model = ranged_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            spread = segment_distributed(
                five_metre, tmp_path / "dask", client=client, rows=2, model=model,
                vectorize=False, preview=False, tile_size=64, overlap=16, resolution=1.5,
            )  # fmt: skip
    local = run(five_metre, tmp_path / "local", model, resolution=1.5)
    np.testing.assert_array_equal(read_all(spread.classes_path), read_all(local.classes_path))
    diff = np.abs(read_all(spread.confidence_path).astype(int) - read_all(local.confidence_path))
    assert diff.max() <= 1


def test_cli_resolution_option(five_metre, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(
        main, ["run", str(five_metre), "-o", str(tmp_path / "x"), "--resolution", "fine"]
    )
    assert bad.exit_code == 1 and "auto, native or a pixel size in metres" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "x").exists()
