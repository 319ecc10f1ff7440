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
from geoseg.io.bands import select_bands
from geoseg.io.read import TileReader, open_raster, scene_info, validate_scene
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


def _tag_alpha(path):
    import rasterio

    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


def test_an_alpha_tagged_band_holding_data_is_not_a_mask(tmp_path):
    """The Ohio NAIP tiles tag near-infrared 'alpha': a NIR of 0 must not make nodata."""
    import rasterio

    from geoseg.io.read import alpha_data_band
    from tests.conftest import write_raster

    rng = np.random.default_rng(0)
    data = rng.integers(8, 255, size=(4, 40, 50), dtype=np.uint8)
    data[3, :10] = 0  # dark water: NIR 0
    path = _tag_alpha(write_raster(tmp_path / "rgbn_alpha.tif", data))
    with rasterio.open(path) as ds:
        assert alpha_data_band(ds) == 4
        assert (ds.read_masks(1) == 0).any()  # what GDAL alone would make of it
    with TileReader(path, [1, 2, 3]) as reader:
        arr, valid = reader.read(PixelWindow(0, 0, 40, 50))
    assert valid.all()
    np.testing.assert_array_equal(arr, data[:3].astype(np.float32))
    # with a nodata value, that value alone marks nodata
    data[:, 30:, :5] = 7
    nodata_path = _tag_alpha(write_raster(tmp_path / "rgbn_nodata.tif", data, nodata=7))
    with TileReader(nodata_path, [1, 2, 3]) as reader:
        _, valid = reader.read(PixelWindow(0, 0, 40, 50))
    assert not valid[30:, :5].any() and valid[:30].all()


def test_the_files_own_mask_still_masks_beside_an_alpha_tagged_nir_band(tmp_path):
    """Found by tests/test_properties.py: a 4-band uint8 GeoTIFF with an internal mask."""
    import rasterio
    from rasterio.transform import from_origin

    import geoseg
    from geoseg.io.grid import scene_validity
    from geoseg.io.read import alpha_data_band, has_own_mask
    from tests.conftest import conv_model, write_raster

    rng = np.random.default_rng(1)
    data = rng.integers(1, 100, size=(4, 6, 7), dtype=np.uint8)
    mask = np.ones((6, 7), dtype=bool)
    mask[4:, 5:] = False
    path = write_raster(
        tmp_path / "masked.tif", data, crs="EPSG:32633",
        transform=from_origin(500_000, 5_300_000, 10, 10), mask=mask,
    )  # fmt: skip
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha and alpha_data_band(ds) == 4
        assert has_own_mask(ds)
    with TileReader(path, [3, 1]) as reader:
        _, valid = reader.read(PixelWindow(0, 0, 6, 7))
    np.testing.assert_array_equal(valid, mask)
    with scene_validity(str(path), [3, 1], 7) as validity:
        np.testing.assert_array_equal(validity(0, 6), mask)
    with pytest.warns(geoseg.errors.AlphaBandWarning):
        result = geoseg.segment(
            path, tmp_path / "out", model=conv_model(2, 3), bands=[3, 1], tile_size=4,
            overlap=0, vectorize=False, preview=False,
        )  # fmt: skip
    with rasterio.open(result.classes_path) as ds:
        np.testing.assert_array_equal(ds.read(1) == 255, ~mask)


def test_a_real_alpha_mask_still_masks(tmp_path):
    import rasterio

    from geoseg.io.read import alpha_data_band
    from tests.conftest import write_raster

    data = np.full((4, 40, 50), 100, dtype=np.uint8)
    data[3] = 255
    data[3, :, :20] = 0  # transparent
    path = _tag_alpha(write_raster(tmp_path / "rgba.tif", data))
    with rasterio.open(path) as ds:
        assert alpha_data_band(ds) is None
    with TileReader(path, [1, 2, 3]) as reader:
        _, valid = reader.read(PixelWindow(0, 0, 40, 50))
    assert not valid[:, :20].any() and valid[:, 20:].all()


def test_segment_warns_and_keeps_the_pixels_of_an_alpha_tagged_nir_band(tmp_path):
    import rasterio

    import geoseg
    from geoseg.errors import AlphaBandWarning
    from tests.conftest import DATA, conv_model

    def nir_zeros(path):
        with rasterio.open(path) as ds:
            return int((ds.read(4) == 0).sum())

    # the held-out Ohio tile with the most pixels whose near-infrared is 0 (water)
    tile = max(sorted((DATA / "ohio" / "val" / "img").glob("*.tif")), key=nir_zeros)
    nir_zero = nir_zeros(tile)
    assert nir_zero > 100
    model = conv_model(3, 4)
    with pytest.warns(AlphaBandWarning, match="band 4 is tagged alpha but holds data"):
        result = geoseg.segment(
            tile, tmp_path / "out", model=model, bands=[1, 2, 3], vectorize=False
        )
    with rasterio.open(result.classes_path) as ds:
        classes = ds.read(1)
    assert (classes != 255).all(), f"{nir_zero} NIR-0 pixels must stay valid"
