"""Torch datasets over labelled images: random training crops and whole validation images.

Images are normalised per item with the training set's band statistics; items are dicts of tensors
(``image`` float32, ``mask`` int64) as the training loop and the export-time scoring read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.errors import TrainingError
from geoseg.training.augment import (
    HueShift,
    flip_rotate,
    jitter_colors,
    random_crop,
    resample_crop,
)
from geoseg.training.label_sets import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

    from geoseg.training.data import LabelledImage

#: How :class:`RandomCropDataset` may weight images when it draws one (its ``sampling``).
SAMPLING = ("pixels", "sqrt", "images")


class RandomCropDataset:
    """Random crops with flips and 90° rotations; ``length`` samples per epoch.

    ``sampling`` sets how often each image is drawn: in proportion to its pixel count
    (``pixels``: every pixel equally likely), to its square root (``sqrt``), or uniformly
    (``images``). ``sqrt`` keeps one group of very large images (tile 7 of the Dubai set is half
    its pixels) from dominating training without cropping small images over and over. Crops
    from images smaller than ``crop`` are padded with the band means (0 once normalised, as
    :class:`geoseg.engine.inference.Normaliser` fills pixels outside a scene) and labels with
    ignore. Items are dicts ``{"image": float32 (C, crop, crop) normalised, "mask": int64 (crop,
    crop)}``.
    """

    def __init__(
        self,
        items: Sequence[LabelledImage],
        crop: int,
        length: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        seed: int = 0,
        augment: bool = True,
        sampling: str = "sqrt",
        scale: tuple[float, float] | None = None,
        color_jitter: float = 0.0,
        hue_shift: HueShift | None = None,
    ) -> None:
        if not items:
            raise TrainingError("no training images")
        if sampling not in SAMPLING:
            raise TrainingError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        self.items = list(items)
        self.crop = crop
        self.length = length
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.seed = seed
        self.augment = augment
        if scale is not None and not 0 < scale[0] <= scale[1]:
            raise TrainingError(f"scale must be a range 0 < low <= high, got {scale!r}")
        self.scale = scale
        if not 0 <= color_jitter < 1:
            raise TrainingError(f"color_jitter must be in [0, 1), got {color_jitter!r}")
        self.color_jitter = color_jitter
        self.hue_shift = hue_shift
        pixels = np.array([i.pixels for i in self.items], dtype=np.float64)
        draw = {"pixels": pixels, "sqrt": np.sqrt(pixels), "images": np.ones_like(pixels)}
        self.weights = draw[sampling] / draw[sampling].sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import torch

        # Seeded per index and epoch-independent draws would repeat crops, so mix in fresh entropy
        # unless a worker seed was fixed by the DataLoader (torch seeds numpy per worker).
        rng = np.random.default_rng([self.seed, index, int(torch.randint(0, 2**31, ()).item())])
        item = self.items[int(rng.choice(len(self.items), p=self.weights))]
        window = self.crop
        if self.augment and self.scale is not None:
            # Zoom by a log-uniform factor: a window of crop/zoom pixels resampled to crop.
            zoom = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
            window = max(int(round(self.crop / zoom)), 1)
        image, label = random_crop(item.image, item.label, window, rng, fill=self.mean[:, 0, 0])
        if window != self.crop:
            image, label = resample_crop(image, label, self.crop)
        if self.augment:
            image, label = flip_rotate(image, label, rng)
            if self.hue_shift is not None:
                image = self.hue_shift.apply(image, label, rng, item.image.dtype)
            if self.color_jitter:
                image = jitter_colors(image, self.color_jitter, rng, item.image.dtype)
        x = (image.astype(np.float32) - self.mean) / self.std
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
        }


class WholeImageDataset:
    """Validation images whole, padded to a multiple of ``stride``.

    The padding is 0 once normalised (the band mean), as the inference pipeline pads tiles, and
    ignored in the labels.
    """

    def __init__(
        self,
        items: Sequence[LabelledImage],
        mean: Sequence[float],
        std: Sequence[float],
        stride: int = 32,
    ) -> None:
        self.items = list(items)
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.stride = stride

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        item = self.items[index]
        _, h, w = item.image.shape
        ph = math.ceil(h / self.stride) * self.stride - h
        pw = math.ceil(w / self.stride) * self.stride - w
        x = (item.image.astype(np.float32) - self.mean) / self.std
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
        label = np.pad(item.label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(label.astype(np.int64)),
            "region": region_of(item.group),
        }


def region_of(group: str) -> str:
    """The source a group belongs to (``"ohio/val"`` -> ``"ohio"``); ``all`` for one source."""
    return group.split("/", 1)[0] if "/" in group else "all"
