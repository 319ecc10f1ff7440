"""The only place that opens input rasters: validation, band selection and windowed reads.

Reads are windowed and never hold the whole scene; pixels outside the scene (only for scenes
smaller than one tile, padded to the model stride) come back as invalid. Validity combines the
input's nodata value, internal/external masks and alpha bands (GDAL's mask flags) and, for float
inputs, non-finite values.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError

from geoseg.errors import (
    AlphaBandWarning,
    InputError,
    MissingGeoreferenceError,
    NotARasterError,
    SceneNotFoundError,
    warn,
)
from geoseg.types import PixelWindow

if TYPE_CHECKING:
    from geoseg.io.grid import ReadGrid

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: numpy dtype names as GDAL spells them (``gdal_translate -ot``, VRT ``dataType``).
GDAL_TYPE_NAMES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "float32": "Float32", "float64": "Float64",
}  # fmt: skip


@dataclass(frozen=True)
class SceneInfo:
    """What geoseg needs to know about an input raster, read once from its header."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Any  # rasterio.crs.CRS | None
    transform: Any  # affine.Affine
    nodata: float | None
    band_names: tuple[str, ...]
    georeferenced: bool
    res: tuple[float, float]

    @property
    def rotated(self) -> bool:
        """Whether the geotransform has rotation/shear terms."""
        return bool(self.transform.b != 0 or self.transform.d != 0)

    def summary(self) -> str:
        """A human-readable description (what ``geoseg info SCENE`` prints)."""
        from geoseg.io.grid import scene_gsd

        crs = self.crs.to_string() if self.crs else "none"
        gsd = scene_gsd(self)
        return "\n".join(
            [
                f"scene:      {self.path}",
                f"size:       {self.width} x {self.height} px, {self.count} band(s) {self.dtype}",
                f"bands:      {', '.join(self.band_names)}",
                f"crs:        {crs}",
                f"resolution: {self.res[0]:g} x {self.res[1]:g}"
                + (f" (ground sample distance {gsd:.3g} m)" if gsd is not None else ""),
                f"nodata:     {self.nodata}",
                f"transform:  {tuple(round(v, 6) for v in self.transform[:6])}",
            ]
        )


def _gdal_path(path: str | Path) -> str:
    text = str(path)
    if text.startswith("s3://"):
        return "/vsis3/" + text[len("s3://") :]
    if text.startswith(("http://", "https://")):
        return "/vsicurl/" + text
    return text


def open_raster(path: str | Path) -> Any:
    """Open a raster for reading, turning GDAL's failures into clear geoseg errors."""
    text = str(path)
    is_remote = text.startswith(("/vsi", "s3://", "http://", "https://"))
    if not is_remote:
        p = Path(text)
        if not p.exists():
            raise SceneNotFoundError(f"{p} does not exist; check the path")
        if p.is_dir():
            raise InputError(f"{p} is a directory; pass a raster file (e.g. a GeoTIFF) inside it")
        if p.stat().st_size == 0:
            raise NotARasterError(
                f"{p} is empty (0 bytes), so its download or export did not finish; "
                "create or download it again"
            )
    try:
        return rasterio.open(_gdal_path(text))
    except RasterioIOError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise NotARasterError(
            f"{text} cannot be read as a raster ({first}); pass a GeoTIFF or another GDAL raster"
        ) from exc


def scene_info(dataset: Any) -> SceneInfo:
    """Describe an open rasterio dataset."""
    names = []
    for i, ci in enumerate(dataset.colorinterp):
        desc = dataset.descriptions[i]
        if desc:
            names.append(str(desc))
        elif ci not in (ColorInterp.undefined, ColorInterp.alpha):
            names.append(ci.name)
        else:
            names.append(f"band_{i + 1}")
    has_transform = not dataset.transform.is_identity
    return SceneInfo(
        path=str(dataset.name),
        width=dataset.width,
        height=dataset.height,
        count=dataset.count,
        dtype=str(dataset.dtypes[0]),
        crs=dataset.crs,
        transform=dataset.transform,
        nodata=dataset.nodata,
        band_names=tuple(names),
        georeferenced=bool(dataset.crs) and has_transform,
        res=(abs(dataset.res[0]), abs(dataset.res[1])),
    )


def validate_scene(info: SceneInfo, *, allow_ungeoreferenced: bool = False) -> None:
    """Refuse scenes geoseg cannot segment, saying what to do instead."""
    if info.width < 2 or info.height < 2:
        raise InputError(
            f"{info.path} is {info.width} x {info.height} pixels; a scene needs at least 2 x 2. "
            "Check that it is the scene you meant (a 1-pixel raster is often a failed export or "
            "a too-small crop) and export a larger area"
        )
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{info.path} has data type {info.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}. "
            "Convert it first, e.g. gdal_translate -ot Float32"
        )
    if not info.georeferenced and not allow_ungeoreferenced:
        missing = "CRS" if not info.crs else "geotransform"
        raise MissingGeoreferenceError(
            f"{info.path} has no {missing}; outputs could not be placed on a map. Fix the file "
            "(e.g. gdal_edit.py -a_srs / -a_ullr) or pass --allow-ungeoreferenced to work in "
            "pixel coordinates"
        )


#: Side of the full-resolution window at the scene's centre where an alpha band is sampled.
ALPHA_SAMPLE = 512
#: Share of the sample that must be 0 or the maximum for an alpha band to count as a mask (edges
#: of a real mask may hold in-between values after lossy compression).
ALPHA_MASK_SHARE = 0.99


def alpha_data_band(dataset: Any) -> int | None:
    """The 1-based index of a band tagged alpha that holds data rather than a mask, or None.

    GDAL reads an alpha band as the validity mask of every band: 0 is transparent, the maximum
    opaque. Some files tag another band alpha (the NAIP tiles of the Ohio set carry near-infrared
    as an "alpha" 4th band): read as a mask, it would turn every pixel whose NIR is 0 into nodata.
    The rule: an alpha band of which less than 99 % of a full-resolution sample (a window at the
    scene's centre, so no overview blurs a real mask's edges) is 0 or the dtype's maximum holds
    data; it is then neither a mask nor dropped, just a band like the others (selected by
    ``--bands`` or by name), and validity comes from the file's own mask if it has one, else
    from the nodata value alone (:func:`nodata_only_validity`).
    """
    alphas = [i + 1 for i, ci in enumerate(dataset.colorinterp) if ci == ColorInterp.alpha]
    if not alphas:
        return None
    band = alphas[0]
    dtype = np.dtype(dataset.dtypes[band - 1])
    top = np.iinfo(dtype).max if dtype.kind in "ui" else 1.0
    h, w = min(dataset.height, ALPHA_SAMPLE), min(dataset.width, ALPHA_SAMPLE)
    window = rasterio.windows.Window((dataset.width - w) // 2, (dataset.height - h) // 2, w, h)
    sample = dataset.read(band, window=window)
    mask_like = float(np.isin(sample, (0, top)).mean())
    return None if mask_like >= ALPHA_MASK_SHARE else band


def has_own_mask(dataset: Any) -> bool:
    """Whether the file carries its own validity mask (internal or ``.msk``), not an alpha band.

    GDAL reads such a mask in place of an alpha band, so it stays the scene's validity even when
    the alpha-tagged band holds data.
    """
    return any(
        MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        for flags in dataset.mask_flag_enums
    )


def nodata_only_validity(dataset: Any) -> bool:
    """Whether validity comes from the nodata value alone rather than from GDAL's masks.

    So it does when a band tagged alpha holds data (:func:`alpha_data_band`), since GDAL's mask
    would then be that band, unless the file has its own mask (:func:`has_own_mask`).
    """
    return alpha_data_band(dataset) is not None and not has_own_mask(dataset)


def warn_alpha_data(dataset: Any, band: int) -> None:
    """Say once per scene that an alpha-tagged band is read as data."""
    warn(
        f"{dataset.name}: band {band} is tagged alpha but holds data (values other than 0 and "
        "the maximum, e.g. near-infrared), so it is read as a band, not as a validity mask; "
        f"retag it with gdal_edit.py -colorinterp_{band} undefined to silence this",
        AlphaBandWarning,
        stacklevel=4,  # the caller of segment(): read.warn_alpha_data <- plan.open_scene <- segment
    )


def read_validity(
    dataset: Any,
    bands: Sequence[int],
    nodata_only: bool,
    *,
    window: Any = None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """``(H, W)`` bool: where every band in ``bands`` is valid (GDAL's masks, or nodata alone).

    ``nodata_only`` (see :func:`nodata_only_validity`): validity from the nodata value alone. With
    ``out_shape`` the read is decimated (nearest neighbour), as for a preview.
    """
    kwargs = _read_kwargs(len(bands), window, out_shape)
    if not nodata_only:
        valid: np.ndarray = np.all(dataset.read_masks(list(bands), **kwargs) > 0, axis=0)
        return valid
    return valid_by_nodata(dataset.read(list(bands), **kwargs), dataset.nodata)


def read_with_validity(
    dataset: Any, bands: Sequence[int], nodata_only: bool, **where: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(data (C, H, W), valid (H, W))``: the pixels of ``bands`` and :func:`read_validity`.

    ``where``: ``window`` and/or ``out_shape`` (a decimated read), as for :func:`read_validity`.
    """
    kwargs = _read_kwargs(len(bands), where.get("window"), where.get("out_shape"))
    data = dataset.read(list(bands), **kwargs)
    if nodata_only:  # validity from the pixels just read
        return data, valid_by_nodata(data, dataset.nodata)
    return data, np.all(dataset.read_masks(list(bands), **kwargs) > 0, axis=0)


def _read_kwargs(count: int, window: Any, out_shape: tuple[int, int] | None) -> dict[str, Any]:
    """Arguments of rasterio's ``read``: a window, decimated (nearest) to ``out_shape``."""
    kwargs: dict[str, Any] = {"window": window}
    if out_shape is not None:
        kwargs.update(out_shape=(count, *out_shape), resampling=rasterio.enums.Resampling.nearest)
    return kwargs


def valid_by_nodata(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """``(H, W)`` bool from ``(C, H, W)`` data: no band equals ``nodata`` (NaN included)."""
    if nodata is None:
        return np.ones(data.shape[1:], dtype=bool)
    valid: np.ndarray = (
        ~np.any(np.isnan(data), axis=0) if np.isnan(nodata) else np.all(data != nodata, axis=0)
    )
    return valid


class TileReader:
    """Windowed reads of selected bands with a validity mask; safe to use from several threads.

    Each thread gets its own dataset handle (GDAL handles are not thread-safe).
    """

    def __init__(
        self, path: str | Path, bands: Sequence[int], grid: ReadGrid | None = None
    ) -> None:
        self.path = _gdal_path(path)
        self.bands = list(bands)
        self.grid = grid if grid is not None and grid.resampled else None
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        with rasterio.open(self.path) as ds:
            self.height, self.width = ds.height, ds.width
            self.is_float = np.dtype(ds.dtypes[0]).kind == "f"
            self.nodata_only = nodata_only_validity(ds)
            self.nodata = ds.nodata
        if self.grid is not None:  # windows are in the grid's pixels, read resampled
            self.height, self.width = self.grid.height, self.grid.width

    def _dataset(self) -> Any:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = rasterio.open(self.path)
            self._local.ds = ds
            with self._lock:
                self._handles.append(ds)
        return ds

    def read(self, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` as float32 ``(C, H, W)`` plus a boolean validity mask ``(H, W)``.

        Parts of the window outside the scene are zero and invalid.
        """
        ds = self._dataset()
        scene = PixelWindow(0, 0, self.height, self.width)
        inside = window.intersection(scene)
        data = np.zeros((len(self.bands), window.height, window.width), dtype=np.float32)
        valid = np.zeros(window.shape, dtype=bool)
        if inside is None:
            return data, valid
        try:
            raw, ok = self._read_inside(ds, inside)
        except RasterioIOError as exc:
            # rasterio's own message says "see previous exception"; GDAL's reason is the cause
            reason = str(exc.__cause__ or exc).strip().splitlines()[0]
            raise InputError(
                f"reading {self.path} failed at rows {inside.row_off}..{inside.row_end}, cols "
                f"{inside.col_off}..{inside.col_end}: the file is truncated or corrupt ({reason}); "
                "download or export it again (gdalinfo -checksum shows whether it reads through)"
            ) from exc
        if self.is_float:
            ok &= np.all(np.isfinite(raw), axis=0)
            raw = np.where(np.isfinite(raw), raw, 0)
        rows, cols = inside.relative_to(window).slices()
        data[:, rows, cols] = raw
        valid[rows, cols] = ok
        return data, valid

    def _read_inside(self, ds: Any, inside: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity of a window inside the scene (or inside the read grid)."""
        if self.grid is None:
            rw = inside.to_rasterio()
            raw = ds.read(self.bands, window=rw)
            if self.nodata_only:  # validity from the pixels just read
                return raw, valid_by_nodata(raw, self.nodata)
            return raw, np.all(ds.read_masks(self.bands, window=rw) > 0, axis=0)
        # Floating-point windows with out_shape (see geoseg.io.grid): finer than the scene,
        # bilinear, exactly as over the whole scene; coarser, average.
        # Validity is resampled by nearest neighbour, so no mixed value passes for nodata.
        Resampling = rasterio.enums.Resampling
        rw = self.grid.scene_window(inside)
        shape = (len(self.bands), inside.height, inside.width)
        upsampling = self.grid.scale[0] >= 1
        kind = Resampling.bilinear if upsampling else Resampling.average
        raw = ds.read(self.bands, window=rw, out_shape=shape, resampling=kind)
        near = {"window": rw, "out_shape": shape, "resampling": Resampling.nearest}
        if not self.nodata_only:
            return raw, np.all(ds.read_masks(self.bands, **near) > 0, axis=0)
        if self.nodata is None:
            return raw, np.ones(shape[1:], dtype=bool)
        return raw, valid_by_nodata(ds.read(self.bands, **near), self.nodata)

    def close(self) -> None:
        """Close every per-thread handle."""
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
