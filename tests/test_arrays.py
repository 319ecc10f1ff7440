"""``segment_array``: lazy, georeferenced, and equal to ``segment()`` pixel for pixel.

The scenes are crops of the shipped NAIP sample (400 x 300 px, red, green, blue, near-infrared,
nodata 0), segmented by the shipped default model with 128 px tiles (overlap 32, stride 96: a
grid of 3 x 4 tiles in two batches of 8 and 4). They are georeferenced at 1 m pixels, inside the
range the model was trained at, so that ``segment()`` reads them at their own pixel size, as
``segment_array`` reads an array. Both runs use one torch thread: results compared bit for bit
need the same count.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

import geoseg
from geoseg.engine.chunked import ModelSource, stitch_chunk, sub_grid
from geoseg.engine.inference import Predictor
from geoseg.engine.tiling import make_grid
from geoseg.errors import BandMismatchError, InputError, ScaleError
from geoseg.model import default_model_path
from geoseg.types import PixelWindow
from tests.conftest import torch_threads

xr = pytest.importorskip("xarray")
rioxarray = pytest.importorskip("rioxarray")
dask_array = pytest.importorskip("dask.array")

pytestmark = pytest.mark.skipif(not default_model_path().exists(), reason="no default model")

SAMPLE = Path(geoseg.__file__).parent / "data" / "sample" / "naip_rgbn_2016.tif"
TILE = 128
WINDOW = rasterio.windows.Window(200, 150, 400, 300)  # col, row, width, height
PROJECTED = ("EPSG:26914", from_origin(486_900.0, 5_208_000.0, 1.0, 1.0))
GEOGRAPHIC = ("EPSG:4326", from_origin(-99.2, 47.0, 1.2e-5, 9e-6))  # about 0.9 x 1.0 m


def write_crop(path: Path, *, grid=PROJECTED, data: np.ndarray | None = None) -> Path:
    """The sample's crop (or ``data`` on its grid) as a GeoTIFF with named bands."""
    crs, transform = grid
    with rasterio.open(SAMPLE) as src:
        pixels = src.read(window=WINDOW) if data is None else data
        count, height, width = pixels.shape
        profile = src.profile | {
            "width": width, "height": height, "count": count, "crs": crs,
            "transform": transform, "photometric": "MINISBLACK",
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)
            dst.descriptions = src.descriptions[:count]
    return path


def file_outputs(scene: Path, model, out: Path, **kw) -> dict[str, Any]:
    """``segment()``'s outputs (arrays) and grid for ``scene``."""
    result = geoseg.segment(
        scene, out, model=model, tile_size=TILE, vectorize=False, preview=False, **kw
    )
    outputs: dict[str, Any] = {}
    for name in ("classes", "confidence", "probabilities"):
        path = getattr(result, f"{name}_path")
        if path is not None:
            with rasterio.open(path) as ds:
                pixels = ds.read()
                outputs[name] = pixels[0] if name != "probabilities" else pixels
                outputs["crs"], outputs["transform"] = ds.crs, ds.transform
    outputs["tiles_skipped"] = result.tiles_skipped
    return outputs


ALL = ("classes", "confidence", "probabilities")


def assert_same(ds, reference: dict[str, Any], names: tuple[str, ...] = ALL[:2]) -> None:
    """The named outputs of ``ds`` equal the reference's bit for bit."""
    for name in names:
        np.testing.assert_array_equal(ds[name].values, reference[name], err_msg=name)


@pytest.fixture(scope="module")
def model():
    with torch_threads(1):
        yield geoseg.load_model()


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    return write_crop(tmp_path_factory.mktemp("crop") / "crop.tif")


@pytest.fixture(scope="module")
def reference(model, crop, tmp_path_factory) -> dict[str, Any]:
    with torch_threads(1):
        ref = file_outputs(crop, model, tmp_path_factory.mktemp("ref") / "out", probabilities=True)
    assert len(np.unique(ref["classes"])) >= 4  # a varied scene: the blending matters
    return ref


@pytest.fixture(autouse=True)
def _one_thread(model):
    with torch_threads(1):
        yield


@pytest.mark.parametrize(
    "chunks",
    [
        None,  # numpy-backed: segmented at once
        {"y": 96, "x": 96},  # on the tile stride
        {"y": 77, "x": 131},  # misaligned with the grid in both directions
        {"y": 300, "x": 37},  # thin columns: each chunk reaches into two tile columns
        {"y": 20, "x": 400},  # rows thinner than the overlap
        {"y": 1000, "x": 1000},  # one chunk
    ],
    ids=["numpy", "stride", "misaligned", "columns", "thin-rows", "one-chunk"],
)
def test_any_chunking_equals_segment(model, crop, reference, chunks):
    data = rioxarray.open_rasterio(crop, chunks=None if chunks is None else {"band": -1, **chunks})
    ds = geoseg.segment_array(data, model, tile_size=TILE, probabilities=True)
    assert (ds.classes.chunks is None) == (chunks is None)
    if chunks is not None:
        assert ds.classes.chunks == data.isel(band=0).chunks
    assert_same(ds.compute(), reference, ALL)


def test_dataset_layout_and_legend(model, crop, reference):
    ds = geoseg.segment_array(rioxarray.open_rasterio(crop, chunks=128), model, tile_size=TILE,
                              probabilities=True)  # fmt: skip
    names = model.card.classes.names
    assert ds.classes.dtype == ds.confidence.dtype == ds.probabilities.dtype == np.uint8
    assert ds.classes.dims == ("y", "x") and ds.probabilities.dims == ("class", "y", "x")
    assert list(ds["class"].values) == names
    assert ds.classes.attrs["flag_meanings"].split() == names
    assert list(ds.classes.attrs["flag_values"]) == list(range(len(names)))
    assert ds.classes.rio.nodata == 255 and ds.confidence.rio.nodata == 0
    assert ds.probabilities.rio.nodata == 255
    source = rioxarray.open_rasterio(crop)
    np.testing.assert_array_equal(ds.x, source.x)
    np.testing.assert_array_equal(ds.y, source.y)
    assert ds.rio.crs == reference["crs"] and ds.rio.transform() == reference["transform"]
    assert ds.attrs["tile_size"] == TILE and ds.attrs["bands"] == "[1, 2, 3]"
    assert_same(ds.compute(), reference)


def test_accessor(model, crop, reference):
    import geoseg.arrays  # noqa: F401 - registers DataArray.geoseg

    data = rioxarray.open_rasterio(crop, chunks=150)
    assert_same(data.geoseg.segment(model, tile_size=TILE).compute(), reference)


def test_to_raster_round_trip(model, crop, reference, tmp_path):
    from geoseg.vector.vectorize import read_class_table

    ds = geoseg.segment_array(rioxarray.open_rasterio(crop, chunks=100), model, tile_size=TILE)
    path = tmp_path / "classes.tif"
    ds.classes.rio.to_raster(path, driver="COG")  # computes the dask chunks as it writes
    with rasterio.open(path) as out:
        assert out.crs == reference["crs"] and out.transform == reference["transform"]
        assert out.nodata == 255 and out.dtypes[0] == "uint8"
        np.testing.assert_array_equal(out.read(1), reference["classes"])
    assert read_class_table(path).names == model.card.classes.names


def test_lazy_until_computed(model, crop, reference, monkeypatch):
    calls: list[int] = []
    reads: list[int] = []
    predict = Predictor.predict
    lock = threading.Lock()

    def counting_predict(self, inputs):
        with lock:
            calls.append(len(inputs))
        return predict(self, inputs)

    def counting_read(block):
        with lock:
            reads.append(block.size)
        return block

    monkeypatch.setattr(Predictor, "predict", counting_predict)
    pixels = rioxarray.open_rasterio(crop, chunks={"band": -1, "y": 77, "x": 131})
    meta = np.empty((0, 0, 0), pixels.dtype)
    watched = pixels.copy(data=pixels.data.map_blocks(counting_read, meta=meta))
    ds = geoseg.segment_array(watched, model, tile_size=TILE, probabilities=True)
    assert calls == [] and reads == []  # nothing read, no model call
    corner = ds.classes.isel(y=slice(0, 50), x=slice(0, 50)).compute()
    assert calls == [8]  # only the batch holding the one tile that reaches the corner
    np.testing.assert_array_equal(corner.values, reference["classes"][:50, :50])
    calls.clear()
    computed = ds.compute()
    assert sorted(calls) == [4, 8]  # all three outputs from one pass of the model
    assert_same(computed, reference, ALL)


def test_model_is_one_graph_key(model, crop):
    ds = geoseg.segment_array(rioxarray.open_rasterio(crop, chunks=100), model, tile_size=TILE)
    graph = dict(ds.classes.data.__dask_graph__())
    sources = [k for k, v in graph.items() if isinstance(getattr(v, "value", v), ModelSource)]
    assert len(sources) == 1
    batches = [k for k in graph if str(k[0]).startswith("geoseg-batch-")]
    assert len(batches) == 2


def test_local_cluster_runs_the_graph(model, crop, reference, monkeypatch):
    """On a ``dask.distributed`` cluster: the same pixels, one predictor per worker."""
    distributed = pytest.importorskip("distributed")
    from geoseg.distributed import connect

    made: list[str] = []  # the worker each predictor was made on
    init = Predictor.__init__

    def counting_init(self, *args, **kwargs):
        made.append(distributed.get_worker().address)  # ValueError outside a worker
        init(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "__init__", counting_init)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
        connect(client, torch_threads=1),  # geoseg's worker plugin, torch pinned as here
    ):
        data = rioxarray.open_rasterio(crop, chunks={"band": -1, "y": 77, "x": 131})
        ds = geoseg.segment_array(data, model, tile_size=TILE, probabilities=True)
        graph = dict(ds.classes.data.__dask_graph__())
        sources = [v for k, v in graph.items() if str(k[0]).startswith("geoseg-model-")]
        assert len(sources) == 1 and isinstance(sources[0], distributed.Future)  # scattered
        computed = ds.compute()  # the active client runs it
        plugins = client.run(lambda dask_worker: "geoseg" in dask_worker.plugins)
    assert_same(computed, reference, ALL)
    assert 1 <= len(made) == len(set(made)) <= 2  # one predictor per worker, not one per chunk
    assert all(plugins.values())


@pytest.mark.parametrize("grid", [PROJECTED, GEOGRAPHIC], ids=["projected", "geographic"])
def test_nodata_and_nan(model, grid, tmp_path):
    """Nodata 0 (whole tiles of it, which are skipped) and NaN read as nodata as in the file."""
    with rasterio.open(SAMPLE) as src:
        pixels = src.read(window=WINDOW)
    pixels[:, :140, :150] = 0  # covers tile (0, 0) whole: it is left out
    pixels[:, 200:230, 300:340] = 0
    pixels[1, 250, 10] = 0  # one band alone makes a pixel nodata
    scene = write_crop(tmp_path / "holes.tif", grid=grid, data=pixels)
    ref = file_outputs(scene, model, tmp_path / "ref")
    assert ref["tiles_skipped"] == 1 and (ref["classes"] == 255).sum() > 140 * 150
    plain = rioxarray.open_rasterio(scene, chunks={"band": -1, "y": 77, "x": 131})
    assert plain.rio.nodata == 0
    assert_same(geoseg.segment_array(plain, model, tile_size=TILE).compute(), ref)
    masked = rioxarray.open_rasterio(scene, masked=True, chunks={"band": -1, "y": 100, "x": 90})
    assert masked.dtype == np.float32 and bool(masked.isnull().any())
    ds = geoseg.segment_array(masked, model, tile_size=TILE)
    assert_same(ds.compute(), ref)
    assert ds.rio.crs == ref["crs"] and ds.rio.transform() == ref["transform"]


def test_ascending_y_is_segmented_north_up(model, crop, reference, tmp_path):
    data = rioxarray.open_rasterio(crop, chunks={"band": -1, "y": 77, "x": 131})
    ascending = data.isel(y=slice(None, None, -1))
    ds = geoseg.segment_array(ascending, model, tile_size=TILE)
    np.testing.assert_array_equal(ds.y, ascending.y)
    assert ds.rio.transform().e > 0
    north_up = ds.compute().sortby("y", ascending=False)
    assert_same(north_up, reference)
    path = tmp_path / "ascending.tif"
    ds.classes.rio.to_raster(path)
    with rasterio.open(path) as out:
        assert out.transform.e > 0 and out.crs == reference["crs"]
        np.testing.assert_array_equal(out.read(1), reference["classes"][::-1])


def test_bands_by_name_position_and_coordinate(model, crop, reference):
    data = rioxarray.open_rasterio(crop, chunks=150)
    assert data.attrs["long_name"] == ("red", "green", "blue", "nir")
    by_name = geoseg.segment_array(data, model, tile_size=TILE, bands=["Red", "G", "blue"])
    assert_same(by_name.compute(), reference)
    # bands in another order, named by a string band coordinate (as stackstac and odc-stac do)
    shuffled = data.isel(band=[3, 2, 0, 1]).assign_coords(band=["nir", "blue", "red", "green"])
    shuffled.attrs.pop("long_name")
    ds = geoseg.segment_array(shuffled.transpose("y", "x", "band"), model, tile_size=TILE)
    assert ds.attrs["bands"] == "[3, 4, 2]"
    assert_same(ds.compute(), reference)
    # other names for the spatial dims, as rioxarray knows them
    renamed = geoseg.segment_array(data.rename(y="latitude", x="longitude"), model, tile_size=TILE)
    assert renamed.classes.dims == ("latitude", "longitude")
    assert renamed.rio.crs == reference["crs"]
    np.testing.assert_array_equal(renamed.classes.values, reference["classes"])
    with pytest.raises(BandMismatchError, match="no band named 'swir'"):
        geoseg.segment_array(data, model, bands=["red", "green", "swir"])
    with pytest.raises(BandMismatchError, match="expects 3"):
        geoseg.segment_array(data, model, bands=[1, 2])


def test_other_dtypes_are_scaled_as_the_file_is(model, tmp_path):
    """A uint16 copy (x 8 + 50): the array gets the file run's stretch, and so its classes."""
    with rasterio.open(SAMPLE) as src:
        pixels = src.read(window=WINDOW).astype(np.uint16) * 8 + 50
    crs, transform = PROJECTED
    path = tmp_path / "counts.tif"
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=4, dtype="uint16", crs=crs, transform=transform) as dst:  # fmt: skip
        dst.write(pixels)
        dst.descriptions = ("red", "green", "blue", "nir")
    ref = file_outputs(path, model, tmp_path / "ref")
    recorded = json.loads((tmp_path / "ref" / "run.json").read_text())["settings"]["stretch"]
    assert recorded["rule"] == "matched"
    for data in (rioxarray.open_rasterio(path, chunks=150),
                 rioxarray.open_rasterio(path, masked=True).astype(np.float32)):  # fmt: skip
        if data.dtype == np.float32:
            data.encoding["rasterio_dtype"] = "uint16"  # as rioxarray leaves it when masking
        ds = geoseg.segment_array(data, model, tile_size=TILE)
        stretch = json.loads(ds.attrs["stretch"])
        assert stretch.pop("note") == "p2-p98 of the array (400x300 px); 11-bit counts"
        assert stretch == {k: v for k, v in recorded.items() if k != "note"}
        assert ds.attrs["scale"] == "auto"
        assert_same(ds.compute(), ref)
    windows = geoseg.types.Stretch.from_dict(recorded).as_scale()
    plain = rioxarray.open_rasterio(path).values.astype(np.float32)  # no file dtype to go by
    bare = xr.DataArray(plain, dims=("band", "y", "x"), attrs={"long_name": ("red", "green",
                        "blue", "nir")})  # fmt: skip
    assert_same(geoseg.segment_array(bare, model, tile_size=TILE, scale=windows), ref)


def test_single_band_array_and_refusals(tmp_path):
    from tests.conftest import conv_model

    gray = conv_model(in_channels=1, num_classes=3)
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (1, 90, 70)).astype(np.uint8)
    scene = write_crop(tmp_path / "gray.tif", data=pixels)
    ref = file_outputs(scene, gray, tmp_path / "ref", overlap=16)
    data = rioxarray.open_rasterio(scene).squeeze("band", drop=True)
    assert data.dims == ("y", "x")
    ds = geoseg.segment_array(data.chunk(40), gray, tile_size=TILE, overlap=16)
    assert_same(ds.compute(), ref)
    bare = xr.DataArray(pixels[0], dims=("y", "x"))  # no coordinates, no CRS
    assert_same(geoseg.segment_array(bare, gray, tile_size=TILE, overlap=16), ref)
    with pytest.raises(ScaleError, match=r"band 1 \(.*\) of .* is constant.*--scale LO,HI"):
        geoseg.segment_array(xr.zeros_like(data, dtype=np.uint16) + 7, gray)
    with pytest.raises(InputError, match="dims"):
        geoseg.segment_array(data.expand_dims(time=2, band=1), gray)
    with pytest.raises(InputError, match="DataArray"):
        geoseg.segment_array(pixels, gray)  # type: ignore[arg-type]


@st.composite
def chunked_grids(draw):
    height, width = draw(st.integers(2, 260)), draw(st.integers(2, 260))
    tile = draw(st.sampled_from([32, 48, 64, 96]))
    overlap = draw(st.integers(0, tile // 2))
    splits = [
        sorted(draw(st.sets(st.integers(1, n - 1), max_size=5)))
        for n in (height, width)
    ]  # fmt: skip
    return height, width, tile, overlap, splits, draw(st.integers(0, 2**16))


@given(chunked_grids())
@settings(max_examples=60, deadline=None)
def test_sub_grids_blend_exactly_like_the_whole_grid(case):
    """Random tile probabilities and chunkings: each chunk's sub-grid gives the whole's bits."""
    height, width, tile, overlap, (row_splits, col_splits), seed = case
    grid = make_grid(height, width, tile, overlap)
    rng = np.random.default_rng(seed)
    k = 3
    valid_scene = rng.random((height, width)) > 0.1
    results = []
    for t in grid:
        rw, vw = t.read_window, t.valid_window
        valid = np.zeros(rw.shape, bool)
        rows, cols = vw.relative_to(rw).slices()
        valid[rows, cols] = valid_scene[vw.slices()]
        skipped = rng.random() < 0.15
        probs = rng.dirichlet(np.ones(k), rw.shape).transpose(2, 0, 1).astype(np.float32)
        results.append(None if skipped or not valid.any() else (probs, valid))
    whole = stitch_chunk(grid, PixelWindow(0, 0, height, width), k, True, results)
    ncols = len(grid.cols.starts)
    row_edges, col_edges = [0, *row_splits, height], [0, *col_splits, width]
    for y0, y1 in zip(row_edges, row_edges[1:], strict=False):
        for x0, x1 in zip(col_edges, col_edges[1:], strict=False):
            window = PixelWindow(y0, x0, y1 - y0, x1 - x0)
            sub, rows, cols = sub_grid(grid, window)
            origin = PixelWindow(grid.rows.starts[rows.start], grid.cols.starts[cols.start], 0, 0)
            part = stitch_chunk(sub, window.relative_to(origin), k, True,
                                [results[r * ncols + c] for r in rows for c in cols])  # fmt: skip
            for mine, ref in zip(part, whole, strict=True):
                np.testing.assert_array_equal(mine, ref[..., y0:y1, x0:x1])


def test_an_array_outside_the_models_pixel_sizes_warns_and_is_read_as_it_is(model, tmp_path):
    from geoseg.errors import ResolutionWarning

    five = ("EPSG:26914", from_origin(486_900.0, 5_208_000.0, 5.0, 5.0))
    scene = write_crop(tmp_path / "five.tif", grid=five)
    data = rioxarray.open_rasterio(scene).isel(x=slice(0, 128), y=slice(0, 128))
    with pytest.warns(ResolutionWarning, match=r"reproject\(.*resolution=1.49"):
        ds = geoseg.segment_array(data, model, tile_size=TILE)
    assert ds.classes.shape == (128, 128)
