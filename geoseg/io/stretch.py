"""How scene values become the model's: the rules of ``--scale`` (part of the read step).

A model is trained on values of one type and range (its card's ``dtype`` and ``input_range``:
0-255 for the shipped model); many scenes hold others (11/12-bit counts in uint16, reflectance
x 10,000, float32 VRTs). :func:`resolve_stretch` decides, once per run, a :class:`Stretch`: per
band, the scene values ``low`` and ``high`` that map linearly onto the ends of the model's range,
clipped to it. The same windows hold for every tile (no seams) and are recorded in ``run.json``.

``--scale`` (``ScaleSpec``):

- ``none``: the values as they are.
- ``LO,HI`` (or one pair per model band): those windows.
- ``pN,pM``: the scene's own N-th and M-th percentiles, per band (QGIS's cumulative count cut).
- ``auto`` (the default), first rule that applies:

  1. the scene's dtype is the model's: the values as they are;
  2. the scene states that it holds reflectance (GDAL scale/offset that turn its counts into
     reflectance, Sentinel-2 band names ``B02``... with values in 0-10,000 or 0-1, Landsat
     Collection 2 ``SR_B*`` names): the fixed window :data:`REFLECTANCE_WINDOW` (the usual true
     colour rendering; :data:`NIR_WINDOW` for near-infrared), the same for every scene;
  3. otherwise a matched percentile stretch (:func:`matched_window`): the scene is read as the
     bit depth its values fill (11-bit counts / 8, floats in 0-1 x 255), one map for all bands,
     and its 2nd and 98th percentiles are kept inside the spans in which a training image's lay
     (the card's ``input_p2_range``/``input_p98_range``). A scene that is a linear copy of an
     8-bit one thus gets the 8-bit values back; a dark or flat one is stretched to the nearest
     contrast the model was trained on.

Percentiles come from a sample (see :mod:`geoseg.io.sample`), valid pixels only. A band that is
all nodata, NaN or constant, by its stated ``STATISTICS_*`` (checked before any pixel is read) or
in the sample, stops the run with a :class:`~geoseg.errors.ScaleError` naming the band and the
``--scale LO,HI`` to pass, rather than dividing by zero or feeding a black tile.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.errors import ScaleError
from geoseg.types import ModelInput, ScaleSpec, Stretch

#: Percentiles of the matched stretch (auto) and of ``--scale pN,pM``'s default.
STRETCH_LEVELS = (2.0, 98.0)
#: Percentiles that bound the values a scene fills (hot pixels and a few dead ones left out).
ROBUST_LEVELS = (0.5, 99.5)
#: Bit depths of sensors' counts; a scene's values fill the smallest that holds them.
BIT_DEPTHS = (8, 10, 11, 12, 14, 16)
#: Values up to this share above a bit depth's maximum (calibration offsets) still count as it.
DEPTH_TOLERANCE = 0.05
#: Reflectance mapped onto the model's range: visible bands, near-infrared.
REFLECTANCE_WINDOW = (0.0, 0.3)
NIR_WINDOW = (0.0, 0.6)
#: Reflectance x 10,000 in Sentinel-2 L2A (``BOA_QUANTIFICATION_VALUE``) and its upper bound
#: (p98 of a reflectance scene stays below 1.5 even under clouds and snow).
S2_QUANTIFICATION = 10_000.0
MAX_REFLECTANCE = 1.5
#: Landsat Collection 2 Level-2 surface reflectance: reflectance = DN x scale + offset.
LANDSAT_C2_SR = (2.75e-5, -0.2)

_WHAT_TO_DO = (
    "pass --scale LO,HI (the scene values to map onto the model's range, e.g. --scale 0,3000) "
    "or choose other bands with --bands"
)
_S2_NAME = re.compile(r"^b(0[1-9]|1[0-2]|8a)$", re.IGNORECASE)
_LANDSAT_SR_NAME = re.compile(r"^sr_b[1-7]$", re.IGNORECASE)


@dataclass(frozen=True)
class BandFacts:
    """What a scene states about one band in its metadata."""

    name: str  # its description, else its colour interpretation, else band_N
    scale: float = 1.0  # GDAL's scale and offset (physical value = raw x scale + offset)
    offset: float = 0.0
    nbits: int | None = None  # GDAL's IMAGE_STRUCTURE NBITS (e.g. 11 for WorldView)
    boa_offset: float | None = None  # Sentinel-2 L2A BOA_ADD_OFFSET (e.g. -1000)
    quantification: float | None = None  # Sentinel-2 BOA_QUANTIFICATION_VALUE (10000)
    # GDAL's STATISTICS_MINIMUM/MAXIMUM and STATISTICS_VALID_PERCENT (PAM, gdalinfo -stats)
    stated_range: tuple[float, float] | None = None
    valid_percent: float | None = None

    @property
    def scaled(self) -> bool:
        """Whether GDAL's scale/offset change the values."""
        return self.scale != 1.0 or self.offset != 0.0


@dataclass(frozen=True)
class BandSample:
    """Valid values of each band in a sample of the scene.

    ``values`` holds, per band, the values of the pixels where every band is valid (1-D
    float64); ``empty`` says per band whether it has no value of its own in the sample (all
    nodata or non-finite).
    """

    values: tuple[np.ndarray, ...]
    empty: tuple[bool, ...]
    where: str  # what was read, e.g. "overview 1/4 (1024x1024 px)"

    @classmethod
    def from_pixels(
        cls,
        pieces: Sequence[tuple[np.ndarray, np.ndarray]],
        nodata: float | None,
        where: str,
    ) -> BandSample:
        """From ``(data (C, h, w), valid (h, w))`` pieces; NaN and +-inf count as invalid."""
        data = np.concatenate([d.reshape(d.shape[0], -1) for d, _ in pieces], axis=1)
        valid = np.concatenate([v.ravel() for _, v in pieces])
        own = np.isfinite(data)
        if nodata is not None and not np.isnan(nodata):
            own &= data != nodata
        joint = valid & np.all(own, axis=0)
        values = tuple(band[joint].astype(np.float64) for band in data)
        # a band's own emptiness: ``valid`` is every band's, so one empty band would empty all
        return cls(values, tuple(not bool(row.any()) for row in own), where)


@dataclass(frozen=True)
class StretchInput:
    """The scene as the rules see it: dtype, selected bands and their facts, a lazy sample."""

    path: str
    dtype: str
    bands: tuple[int, ...]  # 1-based scene bands, in the model's order
    facts: tuple[BandFacts, ...]
    sample: Callable[[], BandSample]  # read on first use (the rules that need it)


def resolve_stretch(spec: ScaleSpec, scene: StretchInput, model: ModelInput) -> Stretch | None:
    """The :class:`Stretch` ``spec`` gives ``scene`` for ``model`` (None: values as they are)."""
    if spec.mode == "none":
        return None
    if spec.mode == "window":
        low, high = zip(*spec.windows(len(scene.bands)), strict=True)
        return Stretch(low, high, model.value_range, "window", f"--scale {spec}")
    if spec.mode == "auto" and scene.dtype == model.dtype:
        return None
    check_stated_statistics(scene)
    sample = functools.cache(scene.sample)
    if spec.mode == "percentiles":
        levels = (spec.values[0], spec.values[1])
        p_low, p_high = band_percentiles(scene, sample(), levels)
        note = f"p{levels[0]:g}-p{levels[1]:g} of {sample().where}"
        return Stretch(p_low, p_high, model.value_range, "percentiles", note)
    return reflectance_window(scene, sample, model) or matched_window(scene, sample(), model)


def check_stated_statistics(scene: StretchInput) -> None:
    """Refuse, before any pixel is read, a band whose stated statistics say it is empty or flat.

    GDAL's ``STATISTICS_*`` (PAM ``.aux.xml`` or the file's metadata, as ``gdalinfo -stats``
    writes them) cover the whole band; a band ``VALID_PERCENT`` 0 or ``MINIMUM == MAXIMUM`` has
    nothing to stretch.
    """
    for band, facts in zip(scene.bands, scene.facts, strict=True):
        what = f"band {band} ({facts.name}) of {scene.path}"
        if facts.valid_percent == 0:
            raise ScaleError(
                f"{what} is all nodata (its statistics: STATISTICS_VALID_PERCENT=0), so it "
                f"cannot be scaled from its values; {_WHAT_TO_DO}"
            )
        if facts.stated_range is not None and facts.stated_range[0] == facts.stated_range[1]:
            raise ScaleError(
                f"{what} is constant (its statistics: minimum = maximum = "
                f"{facts.stated_range[0]:g}), so no stretch can be computed from it; {_WHAT_TO_DO}"
            )


def check_valid(scene: StretchInput, sample: BandSample) -> None:
    """Refuse a band without a valid value in the sample (all nodata or NaN)."""
    if not any(sample.empty) and all(values.size for values in sample.values):
        return
    i = sample.empty.index(True) if any(sample.empty) else 0
    why = "all nodata or NaN" if sample.empty[i] else "no pixel valid in every band at once"
    raise ScaleError(
        f"band {scene.bands[i]} ({scene.facts[i].name}) of {scene.path} holds no valid pixel "
        f"in {sample.where} ({why}), so it cannot be scaled from its values; {_WHAT_TO_DO}"
    )


def band_percentiles(
    scene: StretchInput, sample: BandSample, levels: tuple[float, float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per band the two percentiles ``levels``; a band empty or constant there is refused."""
    check_valid(scene, sample)
    low, high = [], []
    for i, values in enumerate(sample.values):
        what = f"band {scene.bands[i]} ({scene.facts[i].name}) of {scene.path}"
        p_low, p_high = (float(v) for v in np.percentile(values, levels))
        if not p_high > p_low:
            raise ScaleError(
                f"{what} is constant ({p_low:g} from its percentile {levels[0]:g} to "
                f"{levels[1]:g} in {sample.where}), so no stretch can be computed from it; "
                f"{_WHAT_TO_DO}"
            )
        low.append(p_low)
        high.append(p_high)
    return tuple(low), tuple(high)


def matched_window(scene: StretchInput, sample: BandSample, model: ModelInput) -> Stretch:
    """Rule 3 of ``auto``: the scene read as the bit depth it fills, its contrast kept in range.

    The scene's values are read as the range they fill (:func:`value_container`: the bit depth,
    or 0-1 / 0-255 for floats) mapped onto the model's range, one map for every band so that the
    colour balance stays the scene's. That places the scene's lowest 2nd and highest 98th band
    percentiles in the model's units; where one falls outside the span in which a training
    image's lay (a dark 12-bit scene filling a tenth of its range; a flat one), the map is
    changed just enough to bring it inside (a scene without a container gets the middle of the
    spans). Each band's window is that one map's, through the model's range.
    """
    p2, p98 = band_percentiles(scene, sample, STRETCH_LEVELS)
    r_lo, r_hi = model.value_range
    everything = np.concatenate(sample.values)
    robust = tuple(float(v) for v in np.percentile(everything, ROBUST_LEVELS))
    box, depth = value_container(scene.dtype, scene.facts[0].nbits, (robust[0], robust[1]))
    darkest, brightest = min(p2), max(p98)
    note = f"p2-p98 of {sample.where}; {depth}"
    if box is None:
        t2, t98 = (sum(model.p2_range) / 2, sum(model.p98_range) / 2)
    else:
        to_model = (r_hi - r_lo) / (box[1] - box[0])
        e2, e98 = (r_lo + (v - box[0]) * to_model for v in (darkest, brightest))
        t2, t98 = _clamp(e2, model.p2_range), _clamp(e98, model.p98_range)
        if (t2, t98) == (e2, e98):  # inside the spans: the container itself, exactly
            return Stretch((box[0],) * len(p2), (box[1],) * len(p2), model.value_range,
                           "matched", note)  # fmt: skip
        note += f", contrast brought into the model's p2 {_span(model.p2_range)}, p98 " + (
            _span(model.p98_range)
        )
    gain = (t98 - t2) / (brightest - darkest)
    start = darkest - (t2 - r_lo) / gain
    stop = start + (r_hi - r_lo) / gain
    return Stretch((start,) * len(p2), (stop,) * len(p2), model.value_range, "matched", note)


def value_container(
    dtype: str, nbits: int | None, robust: tuple[float, float]
) -> tuple[tuple[float, float] | None, str]:
    """The range a scene's values fill, from its NBITS or its robust low/high, and its name.

    Integers: ``0..2**n - 1`` for the smallest bit depth of :data:`BIT_DEPTHS` that holds the
    robust high (within :data:`DEPTH_TOLERANCE`); floats: 0-1 or 0-255 when they hold it, else
    as integers. None where values lie well below 0 (no container: standardised data).
    """
    if nbits:
        return (0.0, float(2**nbits - 1)), f"{nbits}-bit counts (NBITS)"
    low, high = robust
    tops = [(float(2**n - 1), f"{n}-bit counts") for n in BIT_DEPTHS]
    if np.dtype(dtype).kind == "f":
        tops = [(1.0, "values in 0-1"), (255.0, "values in 0-255"), *tops]
    for top, name in tops:
        if high <= top * (1 + DEPTH_TOLERANCE):
            if low < -DEPTH_TOLERANCE * top:
                break
            return (0.0, top), name
    return None, f"no bit depth holds values {low:g}..{high:g}"


def reflectance_window(
    scene: StretchInput, sample: Callable[[], BandSample], model: ModelInput
) -> Stretch | None:
    """Rule 2 of ``auto``: a scene that states reflectance gets the fixed reflectance window."""
    units = reflectance_units(scene, sample)
    if units is None:
        return None
    check_valid(scene, sample())
    (scales, offsets), product = units
    low, high = [], []
    for facts, scale, offset in zip(scene.facts, scales, offsets, strict=True):
        nir = facts.name.strip().lower() in ("nir", "b08", "b8a", "sr_b5", "near-infrared")
        start, stop = NIR_WINDOW if nir else REFLECTANCE_WINDOW
        low.append((start - offset) / scale)
        high.append((stop - offset) / scale)
    note = f"{product}: reflectance {REFLECTANCE_WINDOW[0]:g}-{REFLECTANCE_WINDOW[1]:g}"
    return Stretch(tuple(low), tuple(high), model.value_range, "reflectance", note)


def reflectance_units(
    scene: StretchInput, sample: Callable[[], BandSample]
) -> tuple[tuple[tuple[float, ...], tuple[float, ...]], str] | None:
    """Per band ``(scale, offset)`` that turn the scene's values into reflectance, and why.

    None when the scene does not state that it holds reflectance.
    """
    facts, n = scene.facts, len(scene.facts)
    integer = np.dtype(scene.dtype).kind in "ui"
    if all(f.scaled for f in facts):
        top = float(np.iinfo(np.dtype(scene.dtype)).max) if integer else 1.0
        if all(0 < top * f.scale + f.offset <= 20 for f in facts):
            units = (tuple(f.scale for f in facts), tuple(f.offset for f in facts))
            return units, "GDAL scale/offset"
    names = [f.name.strip() for f in facts]
    if integer and all(_LANDSAT_SR_NAME.match(name) for name in names):
        scale, offset = LANDSAT_C2_SR
        return ((scale,) * n, (offset,) * n), "Landsat Collection 2 SR_B* bands"
    if not all(_S2_NAME.match(name) for name in names):
        return None
    p98 = max(float(np.percentile(v, 98)) if v.size else 0.0 for v in sample().values)
    # floats hold reflectance itself or, converted from the product, reflectance x 10,000
    quantification = facts[0].quantification or S2_QUANTIFICATION
    if not integer and p98 <= MAX_REFLECTANCE:
        quantification = 1.0
    offset = (facts[0].boa_offset or 0.0) if integer else 0.0
    if (p98 + offset) / quantification > MAX_REFLECTANCE:
        return None
    units = ((1 / quantification,) * n, (offset / quantification,) * n)
    return units, f"Sentinel-2 bands {','.join(names)} (reflectance x {quantification:g})"


def _clamp(value: float, span: tuple[float, float]) -> float:
    return min(max(value, span[0]), span[1])


def _span(span: tuple[float, float]) -> str:
    return f"{span[0]:.4g}-{span[1]:.4g}"


__all__ = [
    "BandFacts",
    "BandSample",
    "StretchInput",
    "band_percentiles",
    "check_stated_statistics",
    "check_valid",
    "matched_window",
    "reflectance_units",
    "reflectance_window",
    "resolve_stretch",
    "value_container",
]
