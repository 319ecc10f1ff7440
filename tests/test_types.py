"""Value objects of geoseg.types: ``--scale`` (ScaleSpec) and the stretch it resolves to."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geoseg.errors import ConfigError
from geoseg.types import ScaleSpec, Stretch


@pytest.mark.parametrize(
    ("text", "mode", "values", "canonical"),
    [
        ("auto", "auto", (), "auto"),
        (" NONE ", "none", (), "none"),
        ("0,3000", "window", (0.0, 3000.0), "0.0,3000.0"),
        ("-100, 2000.5", "window", (-100.0, 2000.5), "-100.0,2000.5"),
        ("0,1,0,2,0,3", "window", (0.0, 1.0, 0.0, 2.0, 0.0, 3.0), "0.0,1.0,0.0,2.0,0.0,3.0"),
        ("p2,p98", "percentiles", (2.0, 98.0), "p2.0,p98.0"),
        ((0, 255), "window", (0.0, 255.0), "0.0,255.0"),
    ],
)
def test_scale_spec_parses_every_form(text, mode, values, canonical):
    spec = ScaleSpec.parse(text)
    assert (spec.mode, spec.values, str(spec)) == (mode, values, canonical)
    assert ScaleSpec.parse(str(spec)) == spec  # the canonical text is what run.json records


@pytest.mark.parametrize(
    "text", ["", "stretch", "3000", "3000,0", "5,5", "0,1,2", "p2", "p2,98", "p-1,p50",
             "p2,p101", "p98,p2", "p1,p2,p3,p4", "0,nan", "0,inf"]
)  # fmt: skip
def test_scale_spec_refuses_bad_values_with_the_forms(text):
    with pytest.raises(ConfigError, match=r"scale must be auto, none, LO,HI .* pN,pM"):
        ScaleSpec.parse(text)


def test_windows_one_pair_for_all_bands_or_one_per_band():
    assert ScaleSpec.parse("0,3000").windows(3) == ((0.0, 3000.0),) * 3
    assert ScaleSpec.parse("0,1,0,2").windows(2) == ((0.0, 1.0), (0.0, 2.0))
    with pytest.raises(ConfigError, match="gives 2 LO,HI pairs but the model takes 3 band"):
        ScaleSpec.parse("0,1,0,2").windows(3)


def test_stretch_maps_its_windows_onto_the_model_range():
    stretch = Stretch((0.0, 100.0), (2047.0, 1100.0), (0.0, 255.0), "matched", "a note")
    gains, biases = stretch.gain_bias()
    for lo, hi, gain, bias in zip(stretch.low, stretch.high, gains, biases, strict=True):
        assert np.isclose(lo * gain + bias, 0.0) and np.isclose(hi * gain + bias, 255.0)
    again = Stretch.from_dict(json.loads(json.dumps(stretch.to_dict())))
    assert again == stretch
    windows = ScaleSpec.parse(stretch.as_scale()).windows(2)
    assert windows == tuple(zip(stretch.low, stretch.high, strict=True))  # exactly, as --scale


def test_stretch_refuses_an_empty_window():
    with pytest.raises(ConfigError, match="low < high"):
        Stretch((5.0,), (5.0,), (0.0, 255.0), "window")
