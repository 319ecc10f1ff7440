"""Crop augmentation: random windows, zoom, the square's symmetries and colour changes.

Each function takes a crop ``(C, H, W)`` (and, where the geometry changes, its ``(H, W)`` label)
and a :class:`numpy.random.Generator`, so :class:`~geoseg.training.datasets.RandomCropDataset`
draws every change from one seeded stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import TrainingError
from geoseg.training.label_sets import IGNORE_INDEX


def random_crop(
    image: npt.NDArray[Any],
    label: npt.NDArray[np.uint8],
    crop: int,
    rng: np.random.Generator,
    *,
    fill: npt.ArrayLike = 0,
    centre: tuple[int, int] | None = None,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]:
    """A ``crop`` x ``crop`` window at a random place, padded with ``fill`` (per band) and 255.

    With ``centre`` ``(row, col)``, the window holds that pixel (at a random place within it,
    so a class-balanced crop does not always put its class in the middle).
    """
    _, h, w = image.shape
    if centre is None:
        r = int(rng.integers(0, max(h - crop, 0) + 1))
        c = int(rng.integers(0, max(w - crop, 0) + 1))
    else:
        r = _start_holding(centre[0], crop, h, rng)
        c = _start_holding(centre[1], crop, w, rng)
    img = image[:, r : r + crop, c : c + crop]
    lab = label[r : r + crop, c : c + crop]
    if img.shape[1:] != (crop, crop):
        padded = np.empty((img.shape[0], crop, crop), dtype=np.float32)
        fill_values = np.broadcast_to(np.asarray(fill, dtype=np.float32), (img.shape[0],))
        padded[:] = fill_values[:, None, None]
        padded[:, : img.shape[1], : img.shape[2]] = img
        pad_h, pad_w = crop - lab.shape[0], crop - lab.shape[1]
        return padded, np.pad(lab, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return img, lab


def _start_holding(pixel: int, crop: int, length: int, rng: np.random.Generator) -> int:
    """A window start in ``0..length - crop`` whose ``crop`` pixels include ``pixel``."""
    low = max(pixel - crop + 1, 0)
    high = min(pixel, max(length - crop, 0))
    return int(rng.integers(low, high + 1)) if high >= low else max(min(pixel, length - crop), 0)


def resample_crop(
    image: npt.NDArray[Any], label: npt.NDArray[np.uint8], size: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Image ``(C, h, w)`` resampled to ``size`` x ``size``, bilinear with antialiasing.

    The label follows with nearest-neighbour sampling, so it keeps only ids it had.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    lab = torch.from_numpy(np.ascontiguousarray(label))[None, None]
    img = F.interpolate(img, (size, size), mode="bilinear", antialias=True, align_corners=False)
    lab = F.interpolate(lab, size=(size, size), mode="nearest-exact")
    return img[0].numpy(), lab[0, 0].numpy()


def flip_rotate(
    image: npt.NDArray[Any], label: npt.NDArray[np.uint8], rng: np.random.Generator
) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]:
    """One of the 8 symmetries of the square, applied to image ``(C, H, W)`` and label alike."""
    k = int(rng.integers(0, 4))
    image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k)
    if rng.integers(0, 2):
        image, label = image[:, :, ::-1], label[:, ::-1]
    return image, label


def jitter_colors(
    image: npt.NDArray[Any],
    strength: float,
    rng: np.random.Generator,
    dtype: npt.DTypeLike = np.uint8,
) -> npt.NDArray[np.float32]:
    """Random photometric change of a crop ``(C, H, W)``: brightness, contrast, saturation, tint.

    Scenes differ in illumination, haze and camera colour balance (tiles of one set alike), so
    each crop is scaled by a brightness factor, stretched about its mean by a contrast factor,
    moved towards or away from its band-mean grey by a saturation factor (each drawn uniformly
    from ``1 +- strength``), and each band gets its own gain in ``1 +- strength / 4``. Integer
    data are clipped to the range of ``dtype``.
    """
    x = np.asarray(image, dtype=np.float32)
    low, high = 1.0 - strength, 1.0 + strength
    brightness, contrast, saturation = rng.uniform(low, high, size=3)
    gains = rng.uniform(1.0 - strength / 4, 1.0 + strength / 4, size=(x.shape[0], 1, 1))
    grey = x.mean(axis=0, keepdims=True)
    x = grey + (x - grey) * saturation
    centre = float(x.mean())
    out: npt.NDArray[np.float32] = (((x - centre) * contrast + centre) * brightness * gains).astype(
        np.float32, copy=False
    )
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        np.clip(out, info.min, info.max, out=out)
    return out


@dataclass(frozen=True)
class HueShift:
    """Class-conditional colour augmentation: the pixels of some classes get a random hue.

    A class's colour can differ between regions far more than illumination explains: open water
    is blue in Dubai, brown in Ohio's ponds and green in North Dakota's algal prairie lakes. With
    ``probability`` a crop's pixels labelled one of ``class_ids`` are rotated about the grey axis
    of RGB by an angle drawn uniformly from ``+- degrees`` (brightness and texture are kept), so the
    network must recognise them by shape, texture and context as well as by colour. The same
    pixels are also scaled by a gain drawn log-uniformly from ``brightness`` (shallow or turbid
    water is brighter than deep water).

    With ``independent``, each class of ``class_ids`` (every labelled value of the crop when
    ``class_ids`` is empty: set-valued codes too) draws its own chance, angle and gain, so that
    no class keeps a colour the others lose: a colour is never a shortcut to one class.
    """

    class_ids: tuple[int, ...]
    degrees: float = 180.0
    probability: float = 0.5
    brightness: tuple[float, float] = (1.0, 1.0)
    independent: bool = False

    def __post_init__(self) -> None:
        if not self.class_ids and not self.independent:
            raise TrainingError("hue_shift needs at least one class")
        if not 0 < self.degrees <= 180:
            raise TrainingError(f"hue_shift degrees must be in (0, 180], got {self.degrees!r}")
        if not 0 < self.probability <= 1:
            raise TrainingError(
                f"hue_shift probability must be in (0, 1], got {self.probability!r}"
            )
        low, high = self.brightness
        if not 0 < low <= high:
            raise TrainingError(f"hue_shift brightness must be 0 < low <= high, got {low}, {high}")

    def apply(
        self,
        image: npt.NDArray[Any],
        label: npt.NDArray[np.uint8],
        rng: np.random.Generator,
        dtype: npt.DTypeLike = np.uint8,
    ) -> npt.NDArray[Any]:
        """``image`` (3, H, W) with the selected classes' hue rotated (or unchanged)."""
        if image.shape[0] != 3:
            return image
        if self.independent:
            present = np.unique(label)
            chosen = [int(c) for c in present if c != IGNORE_INDEX]
            if self.class_ids:
                chosen = [c for c in chosen if c in self.class_ids]
            groups: list[tuple[int, ...]] = [
                (c,) for c in chosen if rng.random() < self.probability
            ]
        else:
            groups = [self.class_ids] if rng.random() < self.probability else []
        out: npt.NDArray[Any] | None = None
        for group in groups:
            mask = np.isin(label, group)
            if not mask.any():
                continue
            if out is None:
                out = np.asarray(image, dtype=np.float32).copy()
            angle = np.deg2rad(rng.uniform(-self.degrees, self.degrees))
            low, high = self.brightness
            gain = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            out[:, mask] = (hue_rotation(angle) * gain) @ out[:, mask]
        if out is None:
            return image
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            np.clip(out, info.min, info.max, out=out)
        return out


def hue_rotation(angle: float) -> npt.NDArray[np.float32]:
    """The 3x3 matrix rotating RGB colours by ``angle`` radians about the grey axis (1, 1, 1)."""
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(k, k)
    out: npt.NDArray[np.float32] = rot.astype(np.float32)
    return out
