"""``segment_array``: an xarray DataArray in, an xarray Dataset of classes out, lazily for dask.

The array is the scene: dims ``(band, y, x)`` (or ``(y, x)`` for one band), numpy- or
dask-backed, its georeferencing in rioxarray's ``.rio`` (CRS, transform) and its ``x``/``y``
coordinates. Bands are matched to the model by name as in the file pipeline (the band coordinate
when it holds names, else ``long_name``, which rioxarray fills from the band descriptions), or
chosen with ``bands=``; nodata comes from ``.rio.nodata`` (``_FillValue``), and NaN and infinite
values are nodata in float arrays.

The tile loop is :mod:`geoseg.engine.chunked`'s dask graph over the scene's global tile grid, so the
outputs equal :func:`geoseg.segment`'s on the same pixels whatever the chunking. A numpy-backed
array is segmented at once (in chunks of :data:`DEFAULT_CHUNK`, through the same graph); a
dask-backed one gives dask-backed outputs with its ``(y, x)`` chunks, computed only when asked
(``.compute()``, ``.values``, ``.rio.to_raster``), on a ``dask.distributed`` cluster when a client
is active.

Importing this module registers the ``DataArray.geoseg`` accessor: ``da.geoseg.segment(...)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from geoseg.errors import BandMismatchError, InputError

if TYPE_CHECKING:
    from geoseg.io.read import SceneInfo
    from geoseg.model import ModelCard, SegmentationModel
    from geoseg.types import ScaleSpec, Stretch

#: Chunk edge (pixels) used for a numpy-backed array, and the size recommended for dask inputs:
#: with 512 px tiles it costs about 1.3x the blending of a whole-scene run and no extra inference.
DEFAULT_CHUNK = 2048


@dataclass(frozen=True)
class _Scene:
    """A DataArray normalised to ``(band, y, x)``, north-up, and what the pipeline reads of it."""

    pixels: xr.DataArray  # (band, y, x), rows from north to south, columns from west to east
    source: xr.DataArray  # the input as given, whose coordinates the outputs take
    y_dim: str
    x_dim: str
    flip_y: bool
    flip_x: bool
    info: SceneInfo


def segment_array(
    data: xr.DataArray,
    model: str | Path | SegmentationModel | None = None,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    bands: Sequence[int | str] | None = None,
    probabilities: bool = False,
    tta: str | None = None,
    scale: str | Sequence[float] | None = None,
) -> xr.Dataset:
    """Segment a scene held in a DataArray; the outputs of :func:`geoseg.segment` as a Dataset.

    Args:
        data: ``(band, y, x)`` or ``(y, x)``, numpy- or dask-backed; e.g.
            ``rioxarray.open_rasterio(path, chunks=2048)``. An ascending ``y`` (or descending
            ``x``) is segmented north-up, as the same scene in a GeoTIFF would be, and the
            outputs follow the input's order.
        model: checkpoint path, a loaded :class:`~geoseg.model.SegmentationModel`, or ``None``
            for the shipped default.
        tile_size: tile edge in pixels (default: the model's training tile size).
        overlap: pixels shared by neighbouring tiles.
        batch_size: tiles per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (resolved where the tasks run).
        bands: the bands to feed the model: 1-based positions along the band dimension (as
            ``--bands``) or band names (``"red"``, ...); default: matched by name.
        probabilities: also return ``probabilities`` ``(class, y, x)``.
        tta: test-time augmentation: ``none``, ``mirror``, ``flips`` or ``d4``.
        scale: how the array's values become the model's, as ``segment(scale=...)``: ``auto``
            (default; an array read by rioxarray counts as its file's dtype, so a masked uint8
            scene is fed as it is), ``none``, ``"LO,HI"`` (or a pair per band, e.g. a file run's
            ``Stretch.as_scale()``) or ``"pN,pM"``. The attribute ``stretch`` records it.

    Returns:
        A Dataset on the input's ``y``/``x`` coordinates and CRS with ``classes`` (uint8, 255 =
        nodata, the legend in CF ``flag_values``/``flag_meanings`` and ``class_names``/
        ``class_colors``), ``confidence`` (uint8: the winning class's probability x 255, 0 =
        nodata, as ``confidence.tif``) and, when asked, ``probabilities`` (uint8: probability x
        254, 255 = nodata, as ``probabilities.tif``; coordinate ``class`` holds the names).
        Dask-backed (lazy) for a dask-backed input; computing ``classes`` and ``confidence``
        together (``ds.compute()``, ``dask.compute``) runs the model once for both.
    """
    import dask.array as da

    from geoseg.engine.chunked import ChunkedJob, segment_chunks
    from geoseg.engine.journal import model_fingerprint
    from geoseg.engine.tiling import make_grid
    from geoseg.io.bands import select_bands
    from geoseg.model import SegmentationModel, load_model
    from geoseg.pipeline import resolve_config

    cfg = resolve_config(
        None, model=model, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        device=device, probabilities=probabilities, tta=tta, scale=scale,
    )  # fmt: skip
    seg_model = model if isinstance(model, SegmentationModel) else load_model(cfg.model)
    card = seg_model.card
    scene = _scene(data)
    chosen = select_bands(scene.info, card.bands, _band_positions(scene.info, bands))
    _warn_outside_range(scene.info, card)
    tile, overlap_px = cfg.tiling.resolve(card.tile_size, card.tile_overlap)
    info = scene.info
    grid = make_grid(info.height, info.width, tile, overlap_px, multiple=card.output_stride)
    pixels = scene.pixels.data[[b - 1 for b in chosen]]
    stretch = _stretch(scene, chosen, pixels, cfg.scale_spec, card)
    job = ChunkedJob(grid, card, cfg.inference, info.nodata, cfg.output.probabilities, stretch)
    lazy = isinstance(pixels, da.Array)
    if not lazy:
        pixels = da.from_array(pixels, chunks=(-1, DEFAULT_CHUNK, DEFAULT_CHUNK))
    key = model_fingerprint(seg_model)["sha256"]
    outputs: list[Any] = list(segment_chunks(pixels, seg_model, job, key))
    if not lazy:
        from dask.base import compute

        outputs = list(compute(*outputs))
    ds = _dataset(scene, card, outputs, chosen, tile=grid.rows.size, overlap=overlap_px)
    ds.attrs.update(scale=cfg.scale, stretch=json.dumps(stretch.to_dict() if stretch else None))
    return ds


def _stretch(
    scene: _Scene, bands: Sequence[int], pixels: Any, spec: ScaleSpec, card: ModelCard
) -> Stretch | None:
    """The array's :class:`~geoseg.types.Stretch`, from the windows a file would be sampled at.

    The array's dtype for the rules is its file's when rioxarray read it (``rasterio_dtype``:
    a masked uint8 scene arrives as float32), else its own; GDAL's scale/offset come from the
    ``scale_factor``/``add_offset`` attributes rioxarray leaves when it does not apply them.
    """
    import dask.array as da
    from dask.base import compute

    from geoseg.io.sample import sample_windows
    from geoseg.io.stretch import BandFacts, BandSample, StretchInput, resolve_stretch

    info, attrs = scene.info, scene.source.attrs
    dtype = str(scene.source.encoding.get("rasterio_dtype", info.dtype))
    scale, offset = float(attrs.get("scale_factor", 1.0)), float(attrs.get("add_offset", 0.0))
    facts = tuple(BandFacts(info.band_names[b - 1], scale, offset) for b in bands)

    def sample() -> BandSample:
        windows = sample_windows(info.height, info.width)
        cuts = [pixels[:, w.row_off : w.row_end, w.col_off : w.col_end] for w in windows]
        if isinstance(pixels, da.Array):
            cuts = list(compute(*cuts))
        pieces = [(np.asarray(c), np.ones(c.shape[1:], dtype=bool)) for c in cuts]
        size = f"{windows[0].width}x{windows[0].height} px"
        where = f"{len(windows)} windows of {size}" if len(windows) > 1 else f"the array ({size})"
        return BandSample.from_pixels(pieces, info.nodata, where)

    scene_input = StretchInput(info.path, dtype, tuple(bands), facts, sample)
    return resolve_stretch(spec, scene_input, card.input_spec)


def _warn_outside_range(info: Any, card: Any) -> None:
    """Warn when the array's pixel size lies outside the range the model was trained at.

    ``segment_array`` reads the array at its own pixel size, as ``segment(resolution="native")``
    does: resampling a chunked array belongs to the user (``rio.reproject``) or to the file path.
    """
    from geoseg.errors import ResolutionWarning, warn
    from geoseg.io.grid import auto_gsd, scene_gsd

    gsd, span = scene_gsd(info), card.gsd_range
    if gsd is None or not span or span[0] <= gsd <= span[1]:
        return
    warn(
        f"the array's pixels are {gsd:.3g} m, outside the {span[0]:g}-{span[1]:g} m the model was "
        "trained at; segment_array reads them as they are: resample first "
        f"(e.g. data.rio.reproject(data.rio.crs, resolution={auto_gsd(gsd, span):g})) "
        "or run geoseg.segment on the file, which does",
        ResolutionWarning,
        stacklevel=3,
    )


def _scene(data: xr.DataArray) -> _Scene:
    """Dims, orientation, band names, nodata and georeferencing of ``data``."""
    from geoseg.io.read import SceneInfo, validate_scene

    if not isinstance(data, xr.DataArray):
        raise InputError(
            f"segment_array takes an xarray.DataArray, got {type(data).__name__}; wrap it with "
            "xarray.DataArray(array, dims=('band', 'y', 'x')), or open a file with "
            "rioxarray.open_rasterio"
        )
    y_dim, x_dim = _spatial_dims(data)
    others = [d for d in data.dims if d not in (y_dim, x_dim)]
    if len(others) > 1:
        raise InputError(
            f"segment_array takes dims (band, y, x) or (y, x), got {data.dims}; select one of "
            f"the others first, e.g. data.isel({others[0]}=0)"
        )
    if others:
        band_dim = str(others[0])
        pixels = data.transpose(band_dim, y_dim, x_dim)
    else:
        band_dim = "band"
        pixels = data.expand_dims(band_dim)
    transform = _transform(data)
    flip_y = _ascending(data, y_dim, transform.e if transform is not None else -1.0)
    flip_x = not _ascending(data, x_dim, transform.a if transform is not None else 1.0)
    if flip_y or flip_x:
        pixels = pixels[:, :: -1 if flip_y else 1, :: -1 if flip_x else 1]
    crs = data.rio.crs
    res = (abs(transform.a), abs(transform.e)) if transform is not None else (1.0, 1.0)
    info = SceneInfo(
        path=f"DataArray {data.name!r}" if data.name is not None else "the DataArray",
        width=int(pixels.shape[2]), height=int(pixels.shape[1]), count=int(pixels.shape[0]),
        dtype=str(data.dtype), crs=crs, transform=transform, nodata=_nodata(data),
        band_names=_band_names(pixels, band_dim), georeferenced=crs is not None, res=res,
    )  # fmt: skip
    validate_scene(info, allow_ungeoreferenced=True)
    return _Scene(pixels, data, y_dim, x_dim, flip_y, flip_x, info)


def _spatial_dims(data: xr.DataArray) -> tuple[str, str]:
    if "y" in data.dims and "x" in data.dims:
        return "y", "x"
    try:
        return str(data.rio.y_dim), str(data.rio.x_dim)
    except Exception as exc:  # rioxarray's MissingSpatialDimensionError and kin
        raise InputError(
            f"cannot tell the spatial dims of {data.dims}; name them y and x (data.rename(...)) "
            "or set them with data.rio.set_spatial_dims(x_dim=..., y_dim=...)"
        ) from exc


def _transform(data: xr.DataArray) -> Any:
    """The affine transform of the array's grid, or None when it has none.

    rioxarray's (its grid mapping's ``GeoTransform``, exact) unless that no longer matches the
    coordinates, as after ``data.isel(y=slice(None, None, -1))``: then the one they give.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rotated grids: rioxarray says it cannot recalculate
            stored, fresh = data.rio.transform(), data.rio.transform(recalc=True)
    except Exception:  # no coordinates to compute one from
        return None
    if stored.is_identity and fresh.is_identity:
        return None
    tolerance = 1e-6 * max(abs(fresh.a), abs(fresh.e))
    same = all(abs(a - b) <= tolerance for a, b in zip(stored[:6], fresh[:6], strict=True))
    return stored if same else fresh


def _ascending(data: xr.DataArray, dim: str, step: float) -> bool:
    """Whether coordinates along ``dim`` increase (from the coordinate, else the transform)."""
    if dim in data.coords and data.sizes[dim] > 1:
        values = data[dim].values
        return bool(values[1] > values[0])
    return step > 0


def _nodata(data: xr.DataArray) -> float | None:
    value = data.rio.nodata
    if value is None:
        value = data.attrs.get("_FillValue", data.encoding.get("_FillValue"))
    return None if value is None else float(value)


def _band_names(pixels: xr.DataArray, band_dim: str) -> tuple[str, ...]:
    """Per band: its ``long_name`` entry, else a name held by the band coordinate, else band_N."""
    count = pixels.sizes[band_dim]
    long_name = pixels.attrs.get("long_name")
    if isinstance(long_name, str):
        long_name = [long_name] * count if count == 1 else None
    descriptions = list(long_name) if isinstance(long_name, list | tuple) else []
    labels = pixels[band_dim].values.tolist() if band_dim in pixels.coords else []
    names = []
    for i in range(count):
        desc = descriptions[i] if len(descriptions) == count else None
        label = labels[i] if len(labels) == count else None
        if isinstance(desc, str) and desc:
            names.append(desc)
        elif isinstance(label, str) and label:
            names.append(label)
        else:
            names.append(f"band_{i + 1}")
    return tuple(names)


def _band_positions(info: SceneInfo, bands: Sequence[int | str] | None) -> list[int] | None:
    """``bands=`` as 1-based positions: ints stay, names are looked up among the band names."""
    from geoseg.io.bands import canonical_band_name

    if bands is None:
        return None
    if isinstance(bands, str | int):
        bands = [bands]
    known = [canonical_band_name(n) for n in info.band_names]
    positions = []
    for band in bands:
        if isinstance(band, str):
            key = canonical_band_name(band)
            if key not in known:
                raise BandMismatchError(
                    f"bands=: no band named {band!r}; {info.path} has bands "
                    f"{', '.join(info.band_names)}; pass names among them or 1-based positions"
                )
            positions.append(known.index(key) + 1)
        else:
            positions.append(int(band))
    return positions


def _dataset(
    scene: _Scene, card: ModelCard, outputs: list[Any], bands: Sequence[int], *,
    tile: int, overlap: int,
) -> xr.Dataset:  # fmt: skip
    """The outputs on the input's coordinates, back in its orientation, georeferenced."""
    from geoseg.engine.stitch import NODATA_CLASS, NODATA_CONFIDENCE, NODATA_PROBABILITY
    from geoseg.io.write import class_tags

    source, y_dim, x_dim = scene.source, scene.y_dim, scene.x_dim
    rows = slice(None, None, -1 if scene.flip_y else 1)
    cols = slice(None, None, -1 if scene.flip_x else 1)
    coords = {
        name: coord
        for name, coord in source.coords.items()
        if set(coord.dims) <= {y_dim, x_dim} and name != "band"
    }
    classes, confidence, probs = outputs
    names = card.classes.names
    variables = {
        "classes": xr.DataArray(
            classes[rows, cols], dims=(y_dim, x_dim), coords=coords,
            attrs={
                "long_name": "land-cover class",
                "flag_values": np.array([c.id for c in card.classes], dtype=np.uint8),
                "flag_meanings": " ".join(n.replace(" ", "_") for n in names),
                **class_tags(card.classes),
            },
        ),
        "confidence": xr.DataArray(
            confidence[rows, cols], dims=(y_dim, x_dim), coords=coords,
            attrs={"long_name": "confidence (winning class probability x 255)"},
        ),
    }  # fmt: skip
    if probs is not None:
        variables["probabilities"] = xr.DataArray(
            probs[:, rows, cols], dims=("class", y_dim, x_dim),
            coords={**coords, "class": names},
            attrs={"long_name": "class probability x 254"},
        )  # fmt: skip
    ds = xr.Dataset(
        variables,
        attrs={"model": card.name, "tile_size": tile, "overlap": overlap,
               "bands": json.dumps(list(bands))},
    )  # fmt: skip
    if (y_dim, x_dim) != ("y", "x"):
        ds = ds.rio.set_spatial_dims(x_dim=x_dim, y_dim=y_dim)
    info = scene.info
    if info.crs is not None:
        ds = ds.rio.write_crs(info.crs, grid_mapping_name=source.rio.grid_mapping)
        if info.transform is not None:
            ds = ds.rio.write_transform(info.transform)
    nodata = {"classes": NODATA_CLASS, "confidence": NODATA_CONFIDENCE,
              "probabilities": NODATA_PROBABILITY}  # fmt: skip
    for name in list(ds.data_vars):
        ds[name] = ds[name].rio.write_nodata(nodata[str(name)], encoded=False)
    return ds


@xr.register_dataarray_accessor("geoseg")
class GeosegAccessor:
    """``data.geoseg.segment(...)``: :func:`segment_array` on this DataArray."""

    def __init__(self, data: xr.DataArray) -> None:
        self._data = data

    def segment(
        self, model: str | Path | SegmentationModel | None = None, **options: Any
    ) -> xr.Dataset:
        """:func:`segment_array` with this array as ``data``; the same keyword arguments."""
        return segment_array(self._data, model, **options)


__all__ = ["DEFAULT_CHUNK", "GeosegAccessor", "segment_array"]
