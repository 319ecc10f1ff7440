import json

import numpy as np
import pytest
import rasterio

import geoseg
from geoseg.errors import BandMismatchError, OutputExistsError
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


def test_dtype_mismatch_is_refused(make_raster, tmp_path):
    scene = make_raster(dtype="uint16")
    with pytest.raises(BandMismatchError, match="expects uint8 pixels but .* holds uint16"):
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
