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
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling

from geoseg.errors import OutputError, ResumeError
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

    For resumable runs, :meth:`checkpoint` makes the block rows written so far durable, and a
    writer made with ``resume_rows=N`` re-opens the partial file of an interrupted run, keeps its
    first ``N`` rows and expects the next write at row ``N``. When ``N`` is the full height and
    the COG was already copied into place, the writer has nothing left to do.
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
        resume_rows: int = 0,
    ) -> None:
        self.path = Path(path)
        self.width, self.height, self.count, self.block = width, height, count, block
        self.resampling = resampling
        self._tmp = self.path.with_name(self.path.stem + ".stream.tif")
        self._rows_written = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._complete = False
        if resume_rows:
            self._resume(resume_rows)
            return
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
            # LZW: a file re-opened for update at a checkpoint forgets deflate's ZLEVEL and falls
            # back to level 6, 4-40x slower on class maps; LZW has no level to forget (the COG
            # made at the end is deflate-compressed all the same)
            "compress": "lzw",
            "BIGTIFF": "IF_SAFER",
            # blocks not yet written cost nothing and read back as nodata, so closing a partial
            # file at a checkpoint does not fill the rest of it
            "SPARSE_OK": True,
        }
        if count > 1:
            profile["photometric"] = "MINISBLACK"
            profile["interleave"] = "band"
        try:
            self._ds: Any = rasterio.open(self._tmp, "w", **profile)
        except Exception as exc:  # RasterioIOError, or GDAL's CPLE_* errors
            raise write_failed(self._tmp, exc) from exc
        if colormap is not None:
            self._ds.write_colormap(1, dict(colormap))
        for i, text in enumerate(descriptions or (), start=1):
            self._ds.set_band_description(i, text)
        if tags:
            self._ds.update_tags(**tags)
        if band_tags:
            self._ds.update_tags(1, **band_tags)

    def _resume(self, rows: int) -> None:
        """Re-open the partial file of an interrupted run, whose first ``rows`` rows are durable."""
        rows = min(rows, self.height)
        if rows == self.height and not self._tmp.exists() and self.path.exists():
            self._complete, self._ds, self._rows_written = True, None, rows
            return
        again = "run again without --resume to start over"
        # Any failure to open or read it back means the file is damaged; in update mode GDAL's
        # errors surface as rasterio's private CPLE_* classes, not as RasterioIOError.
        try:
            ds = rasterio.open(self._tmp, "r+")
        except Exception as exc:
            raise ResumeError(f"partial file {self._tmp} is missing or damaged; {again}") from exc
        try:
            if (ds.width, ds.height, ds.count) != (self.width, self.height, self.count):
                raise ResumeError(f"partial file {self._tmp} has another shape; {again}")
            # the last block row the journal vouches for must read back
            last = max(0, rows - self.block)
            ds.read(window=rasterio.windows.Window(0, last, self.width, rows - last))
        except ResumeError:
            ds.close()
            raise
        except Exception as exc:
            ds.close()
            raise ResumeError(f"partial file {self._tmp} is damaged ({exc}); {again}") from exc
        self._ds = ds
        self._rows_written = rows

    @property
    def rows_flushed(self) -> int:
        """Rows ``[0, rows_flushed)`` are in the file (durable after :meth:`checkpoint`)."""
        return self._rows_written

    def checkpoint(self) -> None:
        """Make the rows flushed so far durable, then keep writing.

        GDAL writes a GeoTIFF's directory (where its blocks are) only when the file is closed,
        so a killed process leaves blocks nobody can find; closing, syncing and re-opening for
        update makes the file readable as it stands. Rows short of a block row stay queued.
        """
        if self._complete:
            return
        self.suspend()
        try:
            self._ds = rasterio.open(self._tmp, "r+")
        except Exception as exc:  # RasterioIOError, or a CPLE_* error in update mode
            raise write_failed(self._tmp, exc) from exc

    def suspend(self) -> None:
        """Close the partial file durably and keep it (an interrupted run, resumed later)."""
        if self._ds is not None and not self._ds.closed:
            try:
                self._ds.close()
            except Exception as exc:  # GDAL writes the TIFF directory now: the disk may be full
                raise write_failed(self._tmp, exc) from exc
        if self._tmp.exists():
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

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
        except Exception as exc:  # RasterioIOError, or GDAL's CPLE_* errors
            raise write_failed(self._tmp, exc) from exc
        self._rows_written += nrows
        self._pending = [rest] if rest.shape[1] else []
        self._pending_rows = rest.shape[1]

    def flush(self) -> None:
        """Write the queued rows too (at the end: the scene's last, partial block row)."""
        if self._pending_rows:
            self._flush(self._pending_rows)

    def close(self) -> Path:
        """Flush, build overviews and copy into COG layout at ``path``; returns ``path``.

        The partial file is removed once the copy is complete; an interruption (Ctrl-C) during
        the copy leaves it for a resumed run to copy again.
        """
        if self._complete:
            return self.path
        self.flush()
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
        except Exception as exc:  # RasterioIOError, or GDAL's CPLE_* errors (seen on a full disk)
            self.abort()
            self.path.unlink(missing_ok=True)
            raise write_failed(self.path, exc) from exc
        self._tmp.unlink()
        self._complete = True
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file."""
        if self._ds is not None and not self._ds.closed:
            self._ds.close()
        if self._tmp.exists():
            self._tmp.unlink()


#: Below this many free bytes, a failed write is blamed on a full disk.
LOW_DISK_BYTES = 64 * 1024 * 1024


def write_failed(path: Path, exc: BaseException) -> OutputError:
    """The error for a failed write of ``path``, saying whether its disk is (nearly) full."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < LOW_DISK_BYTES:
        hint = (
            f"the disk holding {path.parent} is full ({free // 1024} kB free); free some space "
            "or pass -o with a folder on another disk"
        )
    else:
        hint = "check that the output folder is writable and its disk not full, or pass -o"
    return OutputError(f"writing {path} failed ({reason}); {hint}")


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
    from geoseg.io.read import nodata_only_validity, read_validity

    with rasterio.open(path) as ds:
        data = ds.read(show, out_shape=(3, *out_shape), resampling=Resampling.nearest)
        nodata_only = nodata_only_validity(ds)
        valid = read_validity(ds, show, nodata_only, out_shape=out_shape)
    valid &= np.all(np.isfinite(data), axis=0)
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
