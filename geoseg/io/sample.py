"""What ``--scale`` reads of a scene: its bands' metadata and a sample of its values.

Part of the read step. The sample never reads the scene whole: a scene of at most
:data:`SAMPLE_PIXELS` is read as it is; a larger one from its overviews when it has them (the
coarsest with at least :data:`OVERVIEW_MIN_PIXELS` pixels), else from
:data:`WINDOWS_PER_SIDE` x :data:`WINDOWS_PER_SIDE` full-resolution windows of :data:`WINDOW`
pixels spread over it (:func:`sample_windows`, which :mod:`geoseg.arrays` samples alike), or,
when those hold fewer than :data:`MIN_VALID` valid pixels (a scene mostly nodata), as many pixels
again in :data:`DENSE_PER_SIDE` x :data:`DENSE_PER_SIDE` smaller windows. Valid pixels only:
nodata, masks and non-finite values are left out as in the tile reads. The rules
that turn the sample into a stretch are :mod:`geoseg.io.stretch`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import rasterio

from geoseg.io.read import _gdal_path, nodata_only_validity, read_with_validity, scene_info
from geoseg.io.stretch import BandFacts, BandSample, StretchInput, resolve_stretch
from geoseg.types import ModelInput, PixelWindow, ScaleSpec, Stretch

if TYPE_CHECKING:
    from geoseg.io.read import SceneInfo

#: A scene of at most this many pixels is sampled whole.
SAMPLE_PIXELS = 1024 * 1024
#: The coarsest overview with at least this many pixels is the sample of a larger scene.
OVERVIEW_MIN_PIXELS = 512 * 512
#: Without overviews: this many windows per side, of this many pixels square.
WINDOWS_PER_SIDE = 4
WINDOW = 256
#: Fewer valid pixels than this in the windows (a scene mostly nodata): as many pixels again
#: in more, smaller windows spread wider (DENSE_PER_SIDE x DENSE_PER_SIDE of DENSE_WINDOW px).
MIN_VALID = 1024
DENSE_PER_SIDE = 16
DENSE_WINDOW = 64


def scene_stretch(
    source: str, info: SceneInfo, bands: Sequence[int], spec: ScaleSpec, model: ModelInput
) -> Stretch | None:
    """The stretch of ``spec`` for ``bands`` of the raster ``source`` (a path or VRT XML)."""
    with rasterio.open(_gdal_path(source)) as ds:
        chosen = tuple(bands)
        scene = StretchInput(info.path, info.dtype, chosen, band_facts(ds, chosen),
                             lambda: sample_dataset(ds, chosen))  # fmt: skip
        return resolve_stretch(spec, scene, model)


def sample_windows(
    height: int, width: int, per_side: int | None = None, side: int | None = None
) -> list[PixelWindow]:
    """The windows sampled of a scene without overviews: the whole of a small one.

    A larger one: ``per_side`` x ``per_side`` (default :data:`WINDOWS_PER_SIDE`) windows of
    ``side`` (:data:`WINDOW`) pixels, centred in the cells of an even grid over the scene.
    """
    if height * width <= SAMPLE_PIXELS:
        return [PixelWindow(0, 0, height, width)]
    per_side, side = per_side or WINDOWS_PER_SIDE, side or WINDOW
    side_h, side_w = min(side, height), min(side, width)
    windows = set()
    for i in range(per_side):
        row = round((i + 0.5) * height / per_side - side_h / 2)
        for j in range(per_side):
            col = round((j + 0.5) * width / per_side - side_w / 2)
            windows.add(PixelWindow(min(max(row, 0), height - side_h),
                                    min(max(col, 0), width - side_w), side_h, side_w))  # fmt: skip
    return sorted(windows)


def band_facts(ds: Any, bands: Sequence[int]) -> tuple[BandFacts, ...]:
    """What the file states about ``bands``: names, scale/offset, NBITS, statistics, S2 keys."""
    names = scene_info(ds).band_names
    dataset_tags = ds.tags()
    facts = []
    for band in bands:
        band_tags = ds.tags(band)  # GDAL's STATISTICS_* among them (the file's or its .aux.xml)
        tags = {**dataset_tags, **band_tags}
        nbits = ds.tags(band, ns="IMAGE_STRUCTURE").get("NBITS")
        scale, offset = ds.scales[band - 1], ds.offsets[band - 1]
        low, high = (_number(band_tags.get(f"STATISTICS_{k}")) for k in ("MINIMUM", "MAXIMUM"))
        facts.append(
            BandFacts(
                name=names[band - 1],
                scale=float(scale) if scale else 1.0,
                offset=float(offset or 0.0),
                nbits=int(nbits) if nbits else None,
                boa_offset=_number(tags.get("BOA_ADD_OFFSET")),
                quantification=_number(tags.get("BOA_QUANTIFICATION_VALUE")),
                stated_range=(low, high) if low is not None and high is not None else None,
                valid_percent=_number(band_tags.get("STATISTICS_VALID_PERCENT")),
            )
        )
    return tuple(facts)


def sample_dataset(ds: Any, bands: Sequence[int]) -> BandSample:
    """A sample of ``bands`` of an open dataset (see the module's docstring for which)."""
    nodata_only = nodata_only_validity(ds)
    height, width = ds.height, ds.width
    if height * width > SAMPLE_PIXELS:
        factor = _overview_factor(ds, bands[0])
        if factor is not None:
            shape = (math.ceil(height / factor), math.ceil(width / factor))
            piece = read_with_validity(ds, bands, nodata_only, out_shape=shape)
            where = f"overview 1/{factor} ({shape[1]}x{shape[0]} px)"
            return BandSample.from_pixels([piece], ds.nodata, where)
    sample = _sample_of(ds, bands, nodata_only, sample_windows(height, width))
    if min(v.size for v in sample.values) < MIN_VALID and height * width > SAMPLE_PIXELS:
        spread = sample_windows(height, width, DENSE_PER_SIDE, DENSE_WINDOW)
        sample = _sample_of(ds, bands, nodata_only, spread)
    return sample


def _sample_of(
    ds: Any, bands: Sequence[int], nodata_only: bool, windows: Sequence[PixelWindow]
) -> BandSample:
    """The valid pixels of ``windows`` (full resolution)."""
    pieces = [read_with_validity(ds, bands, nodata_only, window=w.to_rasterio()) for w in windows]
    if len(windows) == 1 and windows[0].shape == (ds.height, ds.width):
        where = f"the whole scene ({ds.width}x{ds.height} px)"
    else:
        where = f"{len(windows)} windows of {windows[0].width}x{windows[0].height} px"
    return BandSample.from_pixels(pieces, ds.nodata, where)


def _overview_factor(ds: Any, band: int) -> int | None:
    """The coarsest overview factor of ``band`` with at least OVERVIEW_MIN_PIXELS pixels."""
    big_enough = [
        f for f in ds.overviews(band) if (ds.height // f) * (ds.width // f) >= OVERVIEW_MIN_PIXELS
    ]
    return max(big_enough) if big_enough else None


def _number(text: Any) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


__all__ = ["band_facts", "sample_dataset", "sample_windows", "scene_stretch"]
