"""Writing georeferenced outputs: streamed block rows -> Cloud-Optimized GeoTIFF, and the preview.

Rows arrive in order (from the stitcher) and are written in whole block rows into a tiled
temporary GeoTIFF, so memory holds at most one block row per output. ``close`` builds overviews and
copies the file into COG layout (GTiff with ``COPY_SRC_OVERVIEWS``, which, unlike GDAL's COG
driver, never re-labels a 4th uint8 band as alpha).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling

from geoseg.errors import OutputError
from geoseg.types import ClassTable


def overview_factors(width: int, height: int, block: int) -> list[int]:
    """2, 4, 8, ... until the smallest overview fits in one block."""
    factors = []
    f = 2
    while max(width, height) / (f // 2) > block:
        factors.append(f)
        f *= 2
    return factors


class RasterWriter:
    """Stream row bands of a ``count``-band uint8 raster on the input's grid into a COG.

    ``write(row_off, data)`` takes ``(count, h, width)`` arrays in increasing, gap-free row order.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        count: int,
        crs: Any,
        transform: Any,
        nodata: int | None,
        block: int = 512,
        colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
        descriptions: Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
        band_tags: Mapping[str, str] | None = None,
        resampling: Resampling = Resampling.nearest,
    ) -> None:
        self.path = Path(path)
        self.width, self.height, self.count, self.block = width, height, count, block
        self.resampling = resampling
        self._tmp = self.path.with_name(self.path.stem + ".stream.tif")
        self._rows_written = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": count,
            "dtype": "uint8",
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": block,
            "blockysize": block,
            "compress": "deflate",
            "zlevel": 1,
            "BIGTIFF": "IF_SAFER",
        }
        if count > 1:
            profile["photometric"] = "MINISBLACK"
            profile["interleave"] = "band"
        try:
            self._ds = rasterio.open(self._tmp, "w", **profile)
        except rasterio.errors.RasterioIOError as exc:
            raise OutputError(f"cannot create {self._tmp}: {exc}; check the output folder") from exc
        if colormap is not None:
            self._ds.write_colormap(1, dict(colormap))
        for i, text in enumerate(descriptions or (), start=1):
            self._ds.set_band_description(i, text)
        if tags:
            self._ds.update_tags(**tags)
        if band_tags:
            self._ds.update_tags(1, **band_tags)

    def write(self, row_off: int, data: np.ndarray) -> None:
        """Queue rows ``[row_off, row_off + h)``; whole block rows are written as they fill."""
        expected = self._rows_written + self._pending_rows
        if row_off != expected:
            raise ValueError(f"rows must arrive in order: expected row {expected}, got {row_off}")
        if data.ndim == 2:
            data = data[None]
        self._pending.append(data)
        self._pending_rows += data.shape[1]
        full = (self._pending_rows // self.block) * self.block
        if full:
            self._flush(full)

    def _flush(self, nrows: int) -> None:
        stacked = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, 1)
        head, rest = stacked[:, :nrows], stacked[:, nrows:]
        window = rasterio.windows.Window(0, self._rows_written, self.width, nrows)
        try:
            self._ds.write(head, window=window)
        except rasterio.errors.RasterioIOError as exc:
            raise OutputError(f"writing {self._tmp} failed: {exc} (is the disk full?)") from exc
        self._rows_written += nrows
        self._pending = [rest] if rest.shape[1] else []
        self._pending_rows = rest.shape[1]

    def close(self) -> Path:
        """Flush, build overviews and copy into COG layout at ``path``; returns ``path``."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._rows_written != self.height:
            self.abort()
            raise ValueError(f"only {self._rows_written} of {self.height} rows were written")
        factors = overview_factors(self.width, self.height, self.block)
        try:
            if factors:
                self._ds.build_overviews(factors, self.resampling)
            self._ds.close()
            options: dict[str, Any] = {
                "COPY_SRC_OVERVIEWS": "YES",
                "TILED": "YES",
                "BLOCKXSIZE": self.block,
                "BLOCKYSIZE": self.block,
                "COMPRESS": "DEFLATE",
                "PREDICTOR": 2,
                "BIGTIFF": "IF_SAFER",
            }
            if self.count > 1:
                options["PHOTOMETRIC"] = "MINISBLACK"
                options["INTERLEAVE"] = "BAND"
            rasterio.shutil.copy(self._tmp, self.path, driver="GTiff", **options)
        except rasterio.errors.RasterioIOError as exc:
            self.abort()
            raise OutputError(f"writing {self.path} failed: {exc} (is the disk full?)") from exc
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file."""
        if not self._ds.closed:
            self._ds.close()
        if self._tmp.exists():
            self._tmp.unlink()


def class_tags(classes: ClassTable) -> dict[str, str]:
    """Band metadata carrying the legend (read back by ``geoseg vectorize``)."""
    return {
        "class_names": json.dumps([c.name for c in classes]),
        "class_colors": json.dumps([c.hex for c in classes]),
        **{f"class_{c.id}": c.name for c in classes},
    }


def read_stretched_rgb(
    path: str | Path, bands: Sequence[int], out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A display image (H, W, 3) uint8 with a 2-98 % stretch, and its validity (H, W), decimated."""
    show = list(bands[:3]) if len(bands) >= 3 else [bands[0]] * 3
    with rasterio.open(path) as ds:
        data = ds.read(show, out_shape=(3, *out_shape), resampling=Resampling.nearest)
        masks = ds.read_masks(show, out_shape=(3, *out_shape), resampling=Resampling.nearest)
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    rgb = np.zeros((*out_shape, 3), dtype=np.uint8)
    for i in range(3):
        band = data[i].astype(np.float64)
        if valid.any():
            lo, hi = np.percentile(band[valid], [2, 98])
        else:
            lo, hi = 0.0, 1.0
        scaled = np.clip((band - lo) / max(hi - lo, 1e-9), 0, 1) * 255
        rgb[..., i] = np.where(valid, scaled, 0).astype(np.uint8)
    return rgb, valid


def write_preview(
    scene_path: str | Path,
    bands: Sequence[int],
    classes_path: str | Path,
    classes: ClassTable,
    out_path: str | Path,
    *,
    max_width: int = 1024,
    alpha: float = 0.5,
) -> Path:
    """``preview.png``: the scene with the class map overlaid and a legend, at most ``max_width``.

    Reads decimated (from overviews where present), so memory does not depend on scene size.
    """
    from PIL import Image, ImageDraw, ImageFont

    with rasterio.open(classes_path) as ds:
        scale = min(1.0, (max_width - 180) / ds.width) if ds.width > max_width - 180 else 1.0
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        labels = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    rgb, _ = read_stretched_rgb(scene_path, bands, shape)
    lut = np.zeros((256, 3), dtype=np.float64)
    for c in classes:
        lut[c.id] = c.color
    has_class = labels != 255
    blended = rgb.astype(np.float64)
    blended[has_class] = (1 - alpha) * blended[has_class] + alpha * lut[labels[has_class]]
    image = Image.fromarray(blended.astype(np.uint8))

    font = ImageFont.load_default()
    row_h = 20
    legend_w = 180
    height = max(image.height, 16 + row_h * (len(classes) + 1))
    canvas = Image.new("RGB", (image.width + legend_w, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.width + 12
    draw.text((x0, 6), "classes", fill=(0, 0, 0), font=font)
    for i, c in enumerate(classes, start=1):
        y = 6 + i * row_h
        draw.rectangle([x0, y, x0 + 14, y + 14], fill=c.color, outline=(0, 0, 0))
        draw.text((x0 + 22, y + 1), f"{c.id}: {c.name}", fill=(0, 0, 0), font=font)
    out_path = Path(out_path)
    canvas.save(out_path)
    return out_path


def rename_into_place(tmp_dir: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Move a finished temporary output folder to ``out_dir`` (replacing it if ``overwrite``)."""
    trash: Path | None = None
    if out_dir.exists():
        if not overwrite:
            raise OutputError(f"{out_dir} exists; pass --overwrite to replace it")
        trash = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(trash)
    tmp_dir.rename(out_dir)
    if trash is not None:
        import shutil

        shutil.rmtree(trash, ignore_errors=True)


def suggested_block(width: int, height: int, block: int) -> int:
    """Block size clipped for tiny rasters (GDAL needs multiples of 16)."""
    return max(16, min(block, 16 * math.ceil(max(width, height) / 16)))
