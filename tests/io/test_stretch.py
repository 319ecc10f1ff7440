"""The rules of ``--scale`` (geoseg.io.stretch), on samples made here."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import ScaleError
from geoseg.io.stretch import (
    LANDSAT_C2_SR,
    BandFacts,
    BandSample,
    StretchInput,
    resolve_stretch,
    value_container,
)
from geoseg.types import ModelInput, ScaleSpec

#: The shipped model's input (its card's input_spec): uint8, 0-255.
UINT8 = ModelInput("uint8", (0.0, 255.0), (0.0, 114.75), (140.25, 255.0))


def eight_bit(count: int = 3, seed: int = 0) -> np.ndarray:
    """(C, N) values of an 8-bit scene with p2 in the 30s-60s and p98 near 200 per band."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(120, 45, (count, 20_000)), 0, 255).round()


def scene(
    values: np.ndarray,
    dtype: str,
    names: tuple[str, ...] | None = None,
    *,
    empty: tuple[bool, ...] | None = None,
    **facts: object,
) -> StretchInput:
    """A StretchInput over (C, N) sample values; ``facts`` go to every band's BandFacts."""
    count = values.shape[0]
    names = names or tuple(f"band_{i + 1}" for i in range(count))
    sample = BandSample(tuple(np.asarray(v, np.float64) for v in values),
                        empty or (False,) * count, "the test sample")  # fmt: skip
    band_facts = tuple(BandFacts(name, **facts) for name in names)  # type: ignore[arg-type]
    return StretchInput("scene.tif", dtype, tuple(range(1, count + 1)), band_facts, lambda: sample)


def unread(values: np.ndarray, dtype: str, names=None, **facts) -> StretchInput:
    """As :func:`scene`, but reading the sample fails the test."""
    base = scene(values, dtype, names, **facts)

    def sample() -> BandSample:
        raise AssertionError("the sample was read")

    return StretchInput(base.path, base.dtype, base.bands, base.facts, sample)


def in_model_units(stretch, values: np.ndarray) -> np.ndarray:
    """(C, N) scene values as the model gets them."""
    gains, biases = stretch.gain_bias()
    mapped = values * np.asarray(gains)[:, None] + np.asarray(biases)[:, None]
    return np.clip(mapped, *stretch.out_range)


def test_none_and_a_scene_of_the_model_dtype_are_fed_as_they_are():
    values = eight_bit()
    assert resolve_stretch(ScaleSpec.parse("none"), unread(values * 8, "uint16"), UINT8) is None
    assert resolve_stretch(ScaleSpec.parse("auto"), unread(values, "uint8"), UINT8) is None


def test_a_window_is_used_as_given_without_reading_the_scene():
    stretch = resolve_stretch(ScaleSpec.parse("0,3000"), unread(eight_bit(), "uint16"), UINT8)
    assert stretch.low == (0.0,) * 3 and stretch.high == (3000.0,) * 3
    assert stretch.rule == "window" and stretch.out_range == (0.0, 255.0)
    per_band = ScaleSpec.parse("0,1,0,2,0,3")
    assert resolve_stretch(per_band, unread(eight_bit(), "uint16"), UINT8).high == (1, 2, 3)


def test_percentiles_are_the_scene_own_per_band():
    values = eight_bit() * 8 + 50
    stretch = resolve_stretch(ScaleSpec.parse("p2,p98"), scene(values, "uint16"), UINT8)
    assert stretch.rule == "percentiles"
    np.testing.assert_allclose(stretch.low, np.percentile(values, 2, axis=1))
    np.testing.assert_allclose(stretch.high, np.percentile(values, 98, axis=1))
    full = resolve_stretch(ScaleSpec.parse("p0,p100"), scene(values, "uint16"), UINT8)
    np.testing.assert_allclose(full.high, values.max(axis=1))


@pytest.mark.parametrize(
    ("make", "dtype", "container"),
    [
        (lambda v: v * 8, "uint16", (0.0, 2047.0)),  # 11-bit counts
        (lambda v: v * 16, "uint16", (0.0, 4095.0)),  # 12-bit
        (lambda v: v * 8 + 50, "int16", (0.0, 2047.0)),  # a dark offset, within 5 %
        (lambda v: v / 255, "float32", (0.0, 1.0)),
        (lambda v: v, "float32", (0.0, 255.0)),
        (lambda v: v * 64, "float64", (0.0, 16383.0)),  # floats holding 14-bit counts
    ],
)
def test_auto_reads_a_linear_copy_as_the_bit_depth_it_fills(make, dtype, container):
    values = eight_bit()
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(make(values), dtype), UINT8)
    assert stretch.rule == "matched"
    assert stretch.low == (container[0],) * 3 and stretch.high == (container[1],) * 3


def test_auto_ignores_hot_pixels_and_uses_nbits():
    values = eight_bit() * 8
    values[:, ::1000] = 65535  # 0.1 % hot pixels
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(values, "uint16"), UINT8)
    assert stretch.high == (2047.0,) * 3, "hot pixels must not make it 16-bit"
    counts = eight_bit() * 16  # 12-bit counts, but the file says NBITS=14: darker than that
    stated = resolve_stretch(ScaleSpec.parse("auto"), scene(counts, "uint16", nbits=14), UINT8)
    assert "14-bit counts (NBITS)" in stated.note
    own = resolve_stretch(ScaleSpec.parse("auto"), scene(counts, "uint16"), UINT8)
    assert own.high == (4095.0,) * 3 and stated.high != own.high


def test_auto_stretches_a_dark_scene_to_the_contrast_the_model_was_trained_on():
    values = eight_bit() * 2  # 12-bit counts filling only 0-500: too dark as 12-bit
    values[:, 0] = 3000  # one bright pixel is not enough to make the container smaller
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(values, "uint16"), UINT8)
    mapped = in_model_units(stretch, values)
    p98 = np.percentile(mapped, 98, axis=1)
    np.testing.assert_allclose(p98.max(), UINT8.p98_range[0], rtol=1e-6)  # lifted into the span
    p2 = np.percentile(mapped, 2, axis=1)
    assert UINT8.p2_range[0] <= p2.min() <= UINT8.p2_range[1]
    assert len(set(stretch.low)) == 1, "one map for every band: the colour balance is kept"
    assert "contrast brought into the model's p2 0-114.8, p98 140.2-255" in stretch.note


def test_auto_keeps_a_bright_scene_as_its_bit_depth_gives_it():
    values = eight_bit() * 0.5 + 120  # p2 of every band above 114.75: the darkest band counts
    values[2] -= 40
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(values / 255, "float32"), UINT8)
    assert stretch.low == (0.0,) * 3 and stretch.high == (1.0,) * 3


def test_auto_without_a_container_uses_the_middle_of_the_spans():
    values = eight_bit() * 20 - 2500  # standardised-looking int16, well below zero
    box, name = value_container("int16", None, (float(values.min()), float(values.max())))
    assert box is None and "no bit depth" in name
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(values, "int16"), UINT8)
    mapped = in_model_units(stretch, values)
    np.testing.assert_allclose(np.percentile(mapped, 2, axis=1).min(), 57.375, rtol=1e-6)
    np.testing.assert_allclose(np.percentile(mapped, 98, axis=1).max(), 197.625, rtol=1e-6)


S2_RGB = ("B04", "B03", "B02")


@pytest.mark.parametrize(
    ("values", "dtype", "facts", "window"),
    [
        (eight_bit() * 12, "uint16", {}, (0.0, 3000.0)),  # Sentinel-2 L2A, reflectance x 10,000
        (eight_bit() * 12 + 1000, "uint16", {"boa_offset": -1000.0}, (1000.0, 4000.0)),
        (eight_bit() * 12 / 10_000, "float32", {}, (0.0, 0.3)),  # reflectance as floats
        (eight_bit() * 12, "float32", {}, (0.0, 3000.0)),  # floats, still x 10,000
    ],
)
def test_sentinel2_names_with_reflectance_values_get_the_fixed_window(values, dtype, facts, window):
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(values, dtype, S2_RGB, **facts), UINT8)
    assert stretch.rule == "reflectance" and "Sentinel-2" in stretch.note
    np.testing.assert_allclose(stretch.low, (window[0],) * 3, atol=1e-9)
    np.testing.assert_allclose(stretch.high, (window[1],) * 3)


def test_near_infrared_gets_its_own_window_and_other_values_are_not_reflectance():
    values = eight_bit(4) * 12
    names = ("B04", "B03", "B02", "B08")
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(values, "uint16", names), UINT8)
    np.testing.assert_allclose(stretch.high, (3000.0, 3000.0, 3000.0, 6000.0))
    counts = eight_bit() * 250  # up to 64,000: not reflectance x 10,000
    other = resolve_stretch(ScaleSpec.parse("auto"), scene(counts, "uint16", S2_RGB), UINT8)
    assert other.rule == "matched"


def test_gdal_scale_and_offset_and_landsat_names_state_reflectance():
    values = eight_bit() * 12
    scaled = unread(values, "uint16", scale=1e-4, offset=0.0)
    stretch = resolve_stretch(ScaleSpec.parse("auto"), scene(values, "uint16", scale=1e-4), UINT8)
    assert stretch.rule == "reflectance" and "GDAL scale/offset" in stretch.note
    np.testing.assert_allclose(stretch.high, (3000.0,) * 3)
    assert scaled.facts[0].scaled
    landsat = scene(values * 3, "uint16", ("SR_B4", "SR_B3", "SR_B2"))
    stretch = resolve_stretch(ScaleSpec.parse("auto"), landsat, UINT8)
    scale, offset = LANDSAT_C2_SR
    np.testing.assert_allclose(stretch.low, ((0 - offset) / scale,) * 3)
    np.testing.assert_allclose(stretch.high, ((0.3 - offset) / scale,) * 3)


@pytest.mark.parametrize("mode", ["auto", "p2,p98"])
def test_a_constant_band_is_refused_naming_it_and_the_flag(mode):
    values = eight_bit() * 8
    values[1] = 700
    with pytest.raises(ScaleError, match=r"band 2 \(band_2\) of scene.tif is constant") as info:
        resolve_stretch(ScaleSpec.parse(mode), scene(values, "uint16"), UINT8)
    assert "--scale LO,HI" in str(info.value) and "--bands" in str(info.value)


@pytest.mark.parametrize("reflectance", [False, True])
def test_an_all_nodata_or_nan_band_is_refused(reflectance):
    values = eight_bit() * 8
    names = S2_RGB if reflectance else None
    empty = scene(values, "uint16", names, empty=(False, False, True))
    with pytest.raises(ScaleError, match=r"band 3 .* holds no valid pixel .*\(all nodata or NaN\)"):
        resolve_stretch(ScaleSpec.parse("auto"), empty, UINT8)
    nothing = scene(values[:, :0], "float32", names)  # no pixel valid in every band at once
    with pytest.raises(ScaleError, match="no pixel valid in every band at once"):
        resolve_stretch(ScaleSpec.parse("auto"), nothing, UINT8)


def test_stated_statistics_refuse_a_flat_or_empty_band_before_any_read():
    values = eight_bit() * 8
    flat = unread(values, "uint16", stated_range=(7.0, 7.0))
    with pytest.raises(ScaleError, match=r"band 1 .* minimum = maximum = 7.*--scale LO,HI"):
        resolve_stretch(ScaleSpec.parse("auto"), flat, UINT8)
    empty = unread(values, "uint16", valid_percent=0.0)
    with pytest.raises(ScaleError, match="STATISTICS_VALID_PERCENT=0"):
        resolve_stretch(ScaleSpec.parse("p2,p98"), empty, UINT8)
    # the rules that need no statistics still run: a window, or a scene of the model's dtype
    assert resolve_stretch(ScaleSpec.parse("0,10"), flat, UINT8) is not None
    assert resolve_stretch(ScaleSpec.parse("auto"), unread(values, "uint8"), UINT8) is None


def test_sample_ignores_nodata_nan_and_pixels_invalid_in_any_band():
    data = np.array([[[1.0, 2.0, np.nan, 4.0, 5.0]], [[10.0, 0.0, 30.0, 40.0, 50.0]]])
    valid = np.array([[True, True, True, False, True]])
    sample = BandSample.from_pixels([(data, valid)], 0.0, "here")
    np.testing.assert_array_equal(sample.values[0], [1.0, 5.0])
    np.testing.assert_array_equal(sample.values[1], [10.0, 50.0])
    assert sample.empty == (False, False)
    blank = BandSample.from_pixels([(np.full((1, 2, 2), np.nan), np.ones((2, 2), bool))], None, "")
    assert blank.empty == (True,)
