"""Shared fixtures: a factory for tiny GeoTIFFs and tiny deterministic models."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must never reach the network for weights (torchgeo's conftest does the same)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-geoseg-test-torch-home")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, restoring the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread.

    Runs compared pixel for pixel must use the same thread count, and oneDNN spinning on a machine
    shared with other jobs costs more than it gains for tiny forward passes.
    """
    with torch_threads(1):
        yield


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform: Any = None,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
    descriptions: list[str] | None = None,
    tiled: bool = False,
) -> Path:
    """Write ``data`` (C, H, W) as a GeoTIFF."""
    count, height, width = data.shape
    if transform is None:
        transform = (
            from_origin(12.0, 48.0, 0.001, 0.001)
            if crs == "EPSG:4326"
            else from_origin(500000.0, 5300000.0, 10.0, 10.0)
        )
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled and width >= 16 and height >= 16:
        profile.update(
            tiled=True,
            blockxsize=16 * max(1, min(width, 256) // 16),
            blockysize=16 * max(1, min(height, 256) // 16),
        )
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)
            for i, text in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, text)
    return path


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_raster(height=..., width=..., count=..., dtype=..., crs=..., nodata=...)``.

    Pixel values are smooth random fields (so segmentation models produce varied classes).
    """
    counter = [0]

    def factory(
        height: int = 100,
        width: int = 120,
        count: int = 3,
        dtype: str = "uint8",
        *,
        seed: int = 0,
        name: str | None = None,
        data: np.ndarray | None = None,
        **kwargs: Any,
    ) -> Path:
        counter[0] += 1
        if data is None:
            data = smooth_field(count, height, width, dtype, seed)
        path = tmp_path / (name or f"scene{counter[0]}.tif")
        return write_raster(path, data, **kwargs)

    return factory


def smooth_field(count: int, height: int, width: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Random but spatially smooth values over the dtype's usual range."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, height // 8 + 2, width // 8 + 2))
    yy = np.linspace(0, coarse.shape[1] - 1.001, height)
    xx = np.linspace(0, coarse.shape[2] - 1.001, width)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None], (xx - x0)[None, :]
    c = coarse
    field = (
        c[:, y0][:, :, x0] * (1 - fy) * (1 - fx)
        + c[:, y0 + 1][:, :, x0] * fy * (1 - fx)
        + c[:, y0][:, :, x0 + 1] * (1 - fy) * fx
        + c[:, y0 + 1][:, :, x0 + 1] * fy * fx
    )
    field = 0.8 * field + 0.2 * rng.random(field.shape)
    scale = {"uint8": 250, "uint16": 10000, "int16": 10000}.get(dtype, 1.0)
    return (field * scale + (1 if dtype in ("uint8", "uint16") else 0)).astype(dtype)


def conv_model(
    in_channels: int = 3,
    num_classes: int = 4,
    *,
    dtype: str = "uint8",
    seed: int = 0,
    scale: float | None = None,
) -> Any:
    """A deterministic stride-1 conv net (receptive field 7x7) with its model card."""
    import torch

    from geoseg.model import ModelCard, SegmentationModel
    from geoseg.types import ClassTable

    torch.manual_seed(seed)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, num_classes, 3, padding=1),
    ).eval()
    s = scale if scale is not None else {"uint8": 255.0, "uint16": 10000.0}.get(dtype, 1.0)
    card = ModelCard(
        arch="custom-conv",
        encoder="none",
        bands=tuple(f"band_{i + 1}" for i in range(in_channels)),
        mean=(s / 2,) * in_channels,
        std=(s / 4,) * in_channels,
        classes=ClassTable.default(num_classes),
        dtype=dtype,
        tile_size=64,
        output_stride=1,
        name="test-conv",
    )
    return SegmentationModel(module, card)


#: Top-1 minus top-2 class probability under which one model run through other arithmetic (other
#: tile edges or batches, the whole image instead of tiles, another thread count) may pick another
#: class: float32 sums taken in another order differ in the last bits, a few 1e-7 in probability
#: for the test models. Pixels nearer a tie than this are not compared (see assert_classes_agree).
TIE_MARGIN = 1e-5


@dataclass(frozen=True)
class ClassReference:
    """Reference classes with how far each pixel is from a tie between its top two classes."""

    classes: np.ndarray  # (H, W) uint8, 255 = nodata
    margin: np.ndarray  # (H, W) float32: top-1 minus top-2 probability


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 of class probabilities (K, H, W), as (H, W) float32."""
    if probs.shape[0] < 2:
        return np.full(probs.shape[1:], np.inf, np.float32)
    top_two = np.partition(probs, -2, axis=0)[-2:]
    return (top_two[1] - top_two[0]).astype(np.float32)


def assert_classes_agree(
    actual: np.ndarray,
    reference: ClassReference,
    *,
    margin: float = TIE_MARGIN,
    min_share: float = 0.999,
) -> None:
    """``actual`` (H, W) classes equal the reference's wherever it is clear of a tie.

    Nodata (255) must match everywhere. Valid pixels are compared where the reference's top two
    probabilities are more than ``margin`` apart, and those must be at least ``min_share`` of the
    valid pixels, so that the rule cannot hide a real difference.
    """
    expected = reference.classes
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    nodata = expected == 255
    np.testing.assert_array_equal(actual == 255, nodata, err_msg="nodata pixels differ")
    clear = ~nodata & (reference.margin > margin)
    valid = int(np.count_nonzero(~nodata))
    share = np.count_nonzero(clear) / valid if valid else 1.0
    assert share >= min_share, (
        f"only {share:.4%} of {valid} valid pixels are more than {margin:g} from a tie"
    )
    wrong = clear & (actual != expected)
    if wrong.any():
        row, col = (int(i[0]) for i in np.nonzero(wrong))
        raise AssertionError(
            f"{np.count_nonzero(wrong)} of {np.count_nonzero(clear)} pixels clear of a tie differ; "
            f"first at row {row}, col {col}: class {actual[row, col]} instead of "
            f"{expected[row, col]} (top-two margin {reference.margin[row, col]:.3g})"
        )


def whole_image_reference(model: Any, path: Path, bands: list[int] | None = None) -> ClassReference:
    """Reference: run the model once on the whole scene (no tiling)."""
    import torch

    from geoseg.engine.inference import Normaliser

    with rasterio.open(path) as ds:
        idx = bands or list(range(1, ds.count + 1))
        data = ds.read(idx).astype(np.float32)
        valid = np.all(ds.read_masks(idx) > 0, axis=0)
    if np.dtype(data.dtype).kind == "f":
        valid &= np.all(np.isfinite(data), axis=0)
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    x = Normaliser(model.card.mean, model.card.std)(data, valid)
    with torch.inference_mode():
        logits = model.module(torch.from_numpy(x[None]))[0]
    classes = logits.argmax(0).numpy().astype(np.uint8)
    classes[~valid] = 255
    return ClassReference(classes, top_two_margin(torch.softmax(logits, 0).numpy()))


def whole_image_classes(model: Any, path: Path, bands: list[int] | None = None) -> np.ndarray:
    """Reference classes (H, W) of the model run once on the whole scene (no tiling)."""
    return whole_image_reference(model, path, bands).classes


@contextlib.contextmanager
def recorded_margins(height: int, width: int) -> Iterator[np.ndarray]:
    """Record the top-two margin of the blended probabilities of every pixel stitched meanwhile.

    Yields an (H, W) float32 array (NaN where nothing was stitched) filled by the runs in this
    process, such as a local ``geoseg.segment`` of an H x W scene: the float margins that a
    :class:`ClassReference` needs, which the uint8 outputs have lost. Wraps the stitcher's private
    ``_finish`` (accumulated sums, weight and valid count of finished rows of the current band).
    """
    from geoseg.engine.stitch import Stitcher

    margin = np.full((height, width), np.nan, np.float32)
    finish = Stitcher._finish

    def recording(self: Stitcher, acc: np.ndarray, col_off: int) -> None:
        finish(self, acc, col_off)
        assert self._band is not None
        k, row_off = self.k, self._band.row_off
        probs = acc[:k] / np.where(acc[k] > 0, acc[k], 1.0)
        rows, cols = slice(row_off, row_off + acc.shape[1]), slice(col_off, col_off + acc.shape[2])
        margin[rows, cols] = top_two_margin(probs)

    Stitcher._finish = recording  # type: ignore[method-assign]
    try:
        yield margin
    finally:
        Stitcher._finish = finish  # type: ignore[method-assign]


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A randomly initialised smp U-Net (resnet18 encoder) saved as a geoseg checkpoint."""
    from geoseg.model import ModelCard, build_model, save_checkpoint
    from geoseg.types import ClassTable

    card = ModelCard(
        arch="unet",
        encoder="resnet18",
        bands=("red", "green", "blue"),
        mean=(120.0,) * 3,
        std=(60.0,) * 3,
        classes=ClassTable.from_list(
            [
                {"name": "water", "color": "#0000ff"},
                {"name": "land", "color": "#a0522d"},
                {"name": "building", "color": "#ff0000"},
            ]
        ),
        tile_size=128,
        name="tiny-unet",
        arch_kwargs={"decoder_channels": [32, 16, 16, 8, 8]},
    )
    return save_checkpoint(build_model(card), tmp_path / "tiny.pt", half=True)


def small_smp_checkpoint(
    path: Path, *, bands: int = 3, dtype: str = "uint8", tile_size: int = 32, seed: int = 0
) -> Path:
    """A very small smp U-Net (tu-resnet10t, 3 stages, ~0.4 M weights) saved as a checkpoint.

    Fast enough for tests that start ``geoseg run`` in a subprocess or many times over.
    """
    import torch

    from geoseg.model import ModelCard, build_model, save_checkpoint
    from geoseg.types import ClassTable

    names = ("red", "green", "blue", "nir")[:bands] if bands <= 4 else ()
    centre, spread = (120.0, 60.0) if dtype == "uint8" else (0.0, 1.0)
    torch.manual_seed(seed)
    card = ModelCard(
        arch="unet",
        encoder="tu-resnet10t",
        bands=names or tuple(f"band_{i + 1}" for i in range(bands)),
        mean=(centre,) * bands,
        std=(spread,) * bands,
        classes=ClassTable.default(4),
        dtype=dtype,
        tile_size=tile_size,
        name="small-resnet10t",
        arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    )
    return save_checkpoint(build_model(card), path)
