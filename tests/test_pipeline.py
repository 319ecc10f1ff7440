import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

import geoseg
from geoseg.engine.journal import model_fingerprint
from geoseg.errors import ConfigError, OutputExistsError, ScaleError
from geoseg.types import Stretch
from tests.conftest import (
    DATA,
    TIE_MARGIN,
    assert_classes_agree,
    conv_model,
    whole_image_reference,
)


def run(scene, out, model, **kw):
    kw.setdefault("vectorize", False)
    return geoseg.segment(scene, out, model=model, **kw)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [
        (150, 170, 64, 16),
        (150, 170, 64, 32),
        (150, 170, 96, 24),
        (200, 131, 48, 16),
        (40, 50, 64, 16),  # scene smaller than one tile
        (129, 257, 64, 20),
    ],  # sizes not a multiple of the stride
)
def test_tile_invariance(make_raster, tmp_path, height, width, tile, overlap):
    """Receptive field (7 px) < overlap/4 zero margin: stitched == whole-image inference.

    Equal up to float32 rounding: tiles sum their convolutions in another order than the whole
    image, so a pixel whose top two classes are within ``TIE_MARGIN`` (1e-5 in probability) of a
    tie may take the other one. Every pixel further from a tie, at least 99.9 % of them, must match.
    """
    model = conv_model(3, 5)
    scene = make_raster(height=height, width=width, seed=height + width)
    result = run(scene, tmp_path / "out", model, tile_size=tile, overlap=overlap, batch_size=3)
    with rasterio.open(result.classes_path) as ds:
        stitched = ds.read(1)
    reference = whole_image_reference(model, scene)
    assert len(np.unique(reference.classes)) > 1
    assert_classes_agree(stitched, reference, margin=TIE_MARGIN, min_share=0.999)


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_outputs_keep_the_input_grid(make_raster, tmp_path, crs):
    scene = make_raster(height=90, width=110, crs=crs)
    result = run(
        scene, tmp_path / "out", conv_model(3, 3), tile_size=64, overlap=16, probabilities=True
    )
    with rasterio.open(scene) as src:
        grid = (src.crs, src.transform, src.width, src.height)
    for path in (result.classes_path, result.confidence_path, result.probabilities_path):
        with rasterio.open(path) as ds:
            assert (ds.crs, ds.transform, ds.width, ds.height) == grid
            assert ds.dtypes[0] == "uint8"
    with rasterio.open(result.probabilities_path) as ds:
        assert ds.count == 3 and ds.nodata == 255
        probs = ds.read().astype(int)
        assert (np.abs(probs.sum(0) - 254) <= 3).all()


def test_real_scene_with_nodata_collar(tmp_path):
    """RGB.byte.tif: real Landsat scene, EPSG:32618, nodata collar of zeros."""
    scene = DATA / "RGB.byte.tif"
    model = conv_model(3, 4)
    result = run(scene, tmp_path / "out", model, tile_size=128, overlap=32)
    with rasterio.open(scene) as src, rasterio.open(result.classes_path) as out:
        assert out.crs == src.crs and out.transform == src.transform
        assert out.shape == src.shape
        nodata_in = ~np.all(src.read_masks() > 0, axis=0)
        classes = out.read(1)
        assert out.nodata == 255
        np.testing.assert_array_equal(classes == 255, nodata_in)
        assert out.colormap(1)[0][:3] == model.card.classes.by_id(0).color
        tags = out.tags(1)
        assert json.loads(tags["class_names"]) == model.card.classes.names
        assert out.overviews(1) == [2]
        assert out.profile["tiled"] and out.profile["compress"] == "deflate"
    assert result.tiles_skipped > 0  # the corners of the collar hold whole nodata tiles
    assert_classes_agree(classes, whole_image_reference(model, scene))  # up to float32 ties


def test_all_nodata_tiles_are_skipped(make_raster, tmp_path):
    data = np.full((3, 200, 200), 100, np.uint8)
    data[:, :, :130] = 0
    scene = make_raster(data=data, nodata=0)
    result = run(scene, tmp_path / "out", conv_model(3, 3), tile_size=64, overlap=16)
    grid_tiles = result.tiles_total
    with rasterio.open(result.classes_path) as ds:
        classes = ds.read(1)
    assert (classes[:, :130] == 255).all() and (classes[:, 130:] != 255).all()
    # tiles whose columns lie within 0..129 are skipped: columns start 0, 48 (end 112)
    assert result.tiles_skipped == 2 * grid_tiles // 4


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_other_dtypes(make_raster, tmp_path, dtype):
    scene = make_raster(count=2, dtype=dtype)
    model = conv_model(2, 3, dtype=dtype)
    result = run(scene, tmp_path / "out", model, tile_size=64, overlap=16)
    with rasterio.open(result.classes_path) as ds:
        assert_classes_agree(ds.read(1), whole_image_reference(model, scene))


def test_run_json_names_the_model_by_its_digest(make_raster, tmp_path):
    scene = make_raster()
    model = conv_model(3, 3)
    result = run(scene, tmp_path / "out", model)
    written = json.loads((result.out_dir / "run.json").read_text())
    assert written["warnings"] == []  # a georeferenced scene, a model without a pixel-size range
    recorded = written["model"]
    assert recorded["name"] == model.card.name
    assert recorded["sha256"] == model_fingerprint(model)["sha256"]
    assert model_fingerprint(conv_model(3, 3, seed=1))["sha256"] != recorded["sha256"]


def test_another_dtype_is_scaled_onto_the_model_and_recorded(make_raster, tmp_path):
    eight = make_raster(seed=3)
    with rasterio.open(eight) as ds:
        pixels = ds.read()
    counts = make_raster(data=pixels.astype(np.uint16) * 8)  # 11-bit counts of the same scene
    model, logs = conv_model(3, 3), []
    reference = run(eight, tmp_path / "ref", model)
    result = run(counts, tmp_path / "out", model, log=logs.append)
    assert any("uint16 values scaled onto the model's 0-255 (matched" in line for line in logs)
    settings = json.loads((result.out_dir / "run.json").read_text())["settings"]
    assert settings["scale"] == "auto"
    assert settings["stretch"]["rule"] == "matched"
    assert settings["stretch"]["low"] == [0.0] * 3 and settings["stretch"]["high"] == [2047.0] * 3
    assert "statistics" in result.timings
    with rasterio.open(reference.classes_path) as a, rasterio.open(result.classes_path) as b:
        assert np.mean(a.read(1) == b.read(1)) > 0.99  # 8 v x 255 / 2047 = 0.9966 v
    eight_json = json.loads((reference.out_dir / "run.json").read_text())["settings"]
    assert eight_json["stretch"] is None  # the model's own dtype: fed as it is


def test_scale_none_window_and_percentiles(make_raster, tmp_path):
    scene = make_raster(dtype="uint16", seed=4)
    model = conv_model(3, 3)
    for scale, rule in [("none", None), ("0,10000", "window"), ("p1,p99", "percentiles")]:
        result = run(scene, tmp_path / scale.replace(",", "_"), model, scale=scale)
        stretch = json.loads((result.out_dir / "run.json").read_text())["settings"]["stretch"]
        assert (stretch and stretch["rule"]) == rule
    with pytest.raises(ConfigError, match="scale must be auto, none, LO,HI"):
        run(scene, tmp_path / "bad", model, scale="0")


@pytest.mark.parametrize("how", ["constant", "nodata"])
def test_a_band_that_cannot_be_scaled_is_refused_before_any_output(make_raster, tmp_path, how):
    data = np.full((3, 60, 60), 900, np.uint16)
    data[0] = np.arange(60, dtype=np.uint16) * 30
    data[2] = 0 if how == "nodata" else data[0]
    data[1] = 900 if how == "constant" else data[0]
    scene = make_raster(data=data, nodata=0 if how == "nodata" else None)
    band = 2 if how == "constant" else 3
    with pytest.raises(ScaleError, match=rf"band {band} \(band_{band}\) of .*--scale LO,HI"):
        run(scene, tmp_path / "out", conv_model(3, 3))
    assert not (tmp_path / "out").exists()


def test_existing_output_refused_then_overwritten(make_raster, tmp_path):
    scene = make_raster()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(scene, out, conv_model(3, 3))
    assert (out / "keep.txt").read_text() == "user data"
    result = run(scene, out, conv_model(3, 3), overwrite=True)
    assert result.classes_path.exists() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out", "scene1.tif"] or not any(
        p.name.startswith(".out") for p in tmp_path.iterdir()
    )


def test_result_object_and_preview(make_raster, tmp_path):
    from PIL import Image

    scene = make_raster(height=300, width=2000)
    result = run(scene, None, conv_model(3, 3), tile_size=256, overlap=32)
    assert result.out_dir == scene.with_name(scene.stem + "_geoseg")
    assert result.device == "cpu" and result.tiles_total == 2 * 9
    assert {"inference", "stitch_write", "cog", "total"} <= set(result.timings)
    with Image.open(result.preview_path) as im:
        assert im.width <= 1024
    assert "classes.tif" in result.summary()
    assert json.loads((result.out_dir / "run.json").read_text())["settings"]["overlap"] == 32


def test_smp_checkpoint_end_to_end(tiny_checkpoint, tmp_path):
    """A real smp U-Net checkpoint on the real RGBN sample: bands picked by name, stride 32."""
    sample = geoseg.cli.sample_scene_path() if hasattr(geoseg, "cli") else None
    from geoseg.cli import sample_scene_path

    sample = sample_scene_path()
    result = geoseg.segment(
        sample, tmp_path / "out", model=tiny_checkpoint, tile_size=200, overlap=32, vectorize=False
    )
    assert result.bands == (1, 2, 3) and result.tile_size == 224
    with rasterio.open(result.classes_path) as ds, rasterio.open(sample) as src:
        assert ds.transform == src.transform and set(np.unique(ds.read(1))) <= {0, 1, 2, 255}


# --- scenes of other dtypes through the shipped model (#29): the classes of the 8-bit scene

OHIO_TILES = ("tile_14587.tif", "tile_20530.tif")  # real NAIP at 0.6 m, inside the model's range


@pytest.fixture(scope="module")
def default_model():
    from geoseg.model import default_model_path, load_default

    if not default_model_path().exists():
        pytest.skip("no shipped default model")
    return load_default("cpu")


def rgb_copy(src, dst, transform=lambda v: v, dtype="uint8", window=None):
    """The red, green and blue bands of ``src`` (within ``window``) as ``transform(v)`` in dtype."""
    with rasterio.open(src) as ds:
        pixels = ds.read([1, 2, 3], window=window).astype(np.float64)
        profile = {
            "driver": "GTiff", "count": 3, "dtype": dtype, "crs": ds.crs,
            "width": pixels.shape[2], "height": pixels.shape[1],
            "transform": ds.window_transform(window) if window is not None else ds.transform,
        }  # fmt: skip
    with rasterio.open(dst, "w", **profile) as out:
        out.write(transform(pixels).astype(dtype))
        out.descriptions = ("red", "green", "blue")
    return dst


def with_hot_pixels(values):
    """11-bit counts (x 8 + 50) with 0.1 % of the pixels saturated at 65,535 in every band."""
    counts = values * 8 + 50
    counts[:, np.random.default_rng(0).random(values.shape[1:]) < 0.001] = 65535
    return counts


SCALED_COPIES = {
    "uint16 x8+50": (lambda v: v * 8 + 50, "uint16"),
    "float32 /255": (lambda v: v / 255, "float32"),
    "uint16 hot pixels": (with_hot_pixels, "uint16"),
}


def classes_of(scene, out, model, **kw):
    result = run(scene, out, model, preview=False, **kw)
    with rasterio.open(result.classes_path) as ds:
        return ds.read(1), result


@pytest.mark.parametrize("tile", OHIO_TILES)
@pytest.mark.parametrize("copy", SCALED_COPIES)
def test_scaled_copies_of_a_real_scene_give_the_8bit_classes(default_model, tmp_path, tile, copy):
    """The acceptance bar of #29: >= 97 % of the pixels in the class of the 8-bit run."""
    source = DATA / "ohio" / "val" / "img" / tile
    transform, dtype = SCALED_COPIES[copy]
    eight = rgb_copy(source, tmp_path / "eight.tif")
    other = rgb_copy(source, tmp_path / "other.tif", transform, dtype)
    expected, _ = classes_of(eight, tmp_path / "ref", default_model)
    got, result = classes_of(other, tmp_path / "out", default_model)
    agreement = float(np.mean(got == expected))
    assert agreement >= 0.97, f"{copy} of {tile}: {agreement:.2%} of the pixels agree"
    stretch = json.loads((result.out_dir / "run.json").read_text())["settings"]["stretch"]
    assert stretch["rule"] == "matched"


def quadrants(scene, folder):
    """``scene`` cut into 4 files (row by row: top-left first) and the cut of each."""
    with rasterio.open(scene) as ds:
        height, width = ds.height, ds.width
    cuts = [(r, c) for r in (slice(0, height // 2), slice(height // 2, height))
            for c in (slice(0, width // 2), slice(width // 2, width))]  # fmt: skip
    files = []
    for k, (rows, cols) in enumerate(cuts):
        window = rasterio.windows.Window(cols.start, rows.start, cols.stop - cols.start,
                                         rows.stop - rows.start)  # fmt: skip
        files.append(rgb_copy(scene, folder / f"part{k}.tif", dtype="uint16", window=window))
    return files, cuts


def test_many_files_get_one_mapping_from_a_vrt_or_scale_lo_hi(default_model, tmp_path):
    """Four files of one scene, each with its own percentiles, mapped alike through --scale.

    A dark 10-bit copy of a 512 px crop of the sample: every file's own percentiles are lifted
    differently into the spans the model was trained on. The four files read as one mosaic (a
    VRT) get one mapping; passing the mosaic's windows as ``scale=LO,HI`` to each file gives the
    mosaic's classes. Tiles line up with the files (256 px, no overlap), so that what differs is
    the mapping alone, not the context a tile sees across a cut.
    """
    sample = Path(geoseg.__file__).parent / "data" / "sample" / "naip_rgbn_2016.tif"
    window = rasterio.windows.Window(200, 100, 512, 512)
    scene = rgb_copy(sample, tmp_path / "dark.tif", lambda v: v * 3 + 20, "uint16", window)
    files, cuts = quadrants(scene, tmp_path)
    tiling = {"tile_size": 256, "overlap": 0}
    mosaic, result = classes_of(files, tmp_path / "vrt", default_model, **tiling)
    one = json.loads((result.out_dir / "run.json").read_text())["settings"]["stretch"]
    scale = Stretch.from_dict(one).as_scale()
    own_windows, stitched = [], {"own": np.zeros_like(mosaic), "one": np.zeros_like(mosaic)}
    for k, (path, (rows, cols)) in enumerate(zip(files, cuts, strict=True)):
        own, own_result = classes_of(path, tmp_path / f"own{k}", default_model, **tiling)
        settings = json.loads((own_result.out_dir / "run.json").read_text())["settings"]
        own_windows.append(tuple(settings["stretch"]["high"]))
        stitched["own"][rows, cols] = own
        stitched["one"][rows, cols], _ = classes_of(
            path, tmp_path / f"one{k}", default_model, scale=scale, **tiling
        )
    assert len(set(own_windows)) == 4, "each file's own percentiles give it another mapping"
    assert np.mean(stitched["one"] == mosaic) >= 0.99
    assert np.mean(stitched["one"] == mosaic) > np.mean(stitched["own"] == mosaic)
