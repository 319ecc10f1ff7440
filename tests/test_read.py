import numpy as np
import pytest
from rasterio.enums import ColorInterp

from geoseg.errors import (
    BandMismatchError,
    BandOrderWarning,
    InputError,
    MissingGeoreferenceError,
    NotARasterError,
    SceneNotFoundError,
)
from geoseg.read import TileReader, open_raster, scene_info, select_bands, validate_scene
from geoseg.types import PixelWindow
from tests.conftest import DATA

RGB = ("red", "green", "blue")


def info_of(path):
    with open_raster(path) as ds:
        return scene_info(ds)


def test_real_scene_bands_by_colour_interpretation():
    info = info_of(DATA / "RGB.byte.tif")
    assert info.band_names == RGB and info.georeferenced and info.nodata == 0
    assert select_bands(info, RGB) == (1, 2, 3)
    assert select_bands(info, ("blue", "red", "green")) == (3, 1, 2)


def test_rgbn_descriptions_pick_rgb(make_raster):
    path = make_raster(count=4, descriptions=["Red", "Green", "Blue", "NIR"])
    assert select_bands(info_of(path), RGB) == (1, 2, 3)
    assert select_bands(info_of(path), ("nir", "red", "green")) == (4, 1, 2)


def test_unnamed_extra_bands_warn_and_use_first(make_raster):
    path = make_raster(count=5)
    with pytest.warns(BandOrderWarning, match="--bands"):
        assert select_bands(info_of(path), RGB) == (1, 2, 3)


def test_explicit_bands_are_checked(make_raster):
    info = info_of(make_raster(count=4))
    assert select_bands(info, RGB, [4, 3, 2]) == (4, 3, 2)
    with pytest.raises(BandMismatchError, match="do not exist"):
        select_bands(info, RGB, [1, 2, 5])
    with pytest.raises(BandMismatchError, match="expects 3"):
        select_bands(info, RGB, [1, 2])


def test_band_count_mismatch_names_the_fix(make_raster):
    info = info_of(make_raster(count=2))
    with pytest.raises(BandMismatchError, match=r"expects 3 band.*--bands 1,2,3"):
        select_bands(info, RGB)


def test_open_errors(tmp_path):
    with pytest.raises(SceneNotFoundError):
        open_raster(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="directory"):
        open_raster(tmp_path)
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(NotARasterError, match="cannot be read as a raster"):
        open_raster(junk)


def test_missing_crs_refused_unless_allowed(make_raster):
    info = info_of(make_raster(crs=None))
    with pytest.raises(MissingGeoreferenceError, match="--allow-ungeoreferenced"):
        validate_scene(info)
    validate_scene(info, allow_ungeoreferenced=True)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_reader_masks_nodata_and_pads_outside(make_raster, dtype):
    path = make_raster(height=40, width=50, count=2, dtype=dtype, nodata=0)
    import rasterio

    with rasterio.open(path, "r+") as ds:
        data = ds.read()
        data[:, :5, :] = 0
        ds.write(data)
    with TileReader(path, [1, 2]) as reader:
        arr, valid = reader.read(PixelWindow(0, 0, 64, 64))
    assert arr.shape == (2, 64, 64) and arr.dtype == np.float32
    assert not valid[:5].any() and valid[5:40, :50].all()
    assert not valid[40:].any() and not valid[:, 50:].any() and (arr[:, 40:] == 0).all()
    np.testing.assert_array_equal(arr[:, :40, :50], data.astype(np.float32))


def test_reader_internal_mask_and_nan(make_raster):
    data = np.random.default_rng(0).random((1, 30, 30)).astype(np.float32)
    data[0, 0, 0] = np.nan
    data[0, 1, 1] = np.inf
    mask = np.ones((30, 30), bool)
    mask[10:, 10:] = False
    path = make_raster(data=data, mask=mask)
    with TileReader(path, [1]) as reader:
        arr, valid = reader.read(PixelWindow(0, 0, 30, 30))
    assert not valid[0, 0] and not valid[1, 1] and np.isfinite(arr).all()
    assert not valid[10:, 10:].any() and valid[2:10, 2:10].all()


def test_scene_info_summary(make_raster):
    text = info_of(make_raster(crs="EPSG:4326")).summary()
    assert "EPSG:4326" in text and "120 x 100 px" in text


def test_colorinterp_alpha_is_not_a_band_name(make_raster):
    import rasterio

    path = make_raster(count=4)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    assert info_of(path).band_names[:3] == RGB
