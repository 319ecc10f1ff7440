"""Torch datasets over labelled images: random training crops and whole validation images.

Images are normalised per item with the training set's band statistics; items are dicts of tensors
(``image`` float32, ``mask`` int64) as the training loop and the export-time scoring read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import TrainingError
from geoseg.training.augment import (
    HueShift,
    flip_rotate,
    jitter_colors,
    random_crop,
    resample_crop,
)
from geoseg.training.label_sets import IGNORE_INDEX
from geoseg.training.photometric import SensorJitter

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

    The robustness settings: ``target_gsd`` (with its probability, a crop shows its source at a
    pixel size drawn log-uniformly from a range, else zoomed by ``scale``), ``crop_sizes`` (one
    edge per batch of ``batch_size`` consecutive items, cycled, so the context a crop gives
    varies), ``class_balance`` (that share of crops is centred on a pixel of a label code drawn
    uniformly) and ``photometric`` (:class:`~geoseg.training.photometric.SensorJitter`).
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
        photometric: SensorJitter | None = None,
        target_gsd: tuple[tuple[float, float], float] | None = None,
        crop_sizes: Sequence[int] = (),
        batch_size: int = 1,
        class_balance: float = 0.0,
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
        self.photometric = photometric
        self.target_gsd = target_gsd
        self.crop_sizes = tuple(crop_sizes) or (crop,)
        self.batch_size = max(int(batch_size), 1)
        self.balance = ClassBalancedCentres(self.items) if class_balance > 0 else None
        self.class_balance = float(class_balance)
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
        image, label = self.sample(index, rng)
        x = (image.astype(np.float32) - self.mean) / self.std
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x)),
            "mask": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
        }

    def sample(
        self, index: int, rng: np.random.Generator, *, photometric: bool = True
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]:
        """Crop ``index`` in image units ``(C, crop, crop)`` and its label, augmented."""
        crop = self.crop_sizes[(index // self.batch_size) % len(self.crop_sizes)]
        if self.balance is not None and self.augment and rng.random() < self.class_balance:
            item_index, centre = self.balance.draw(rng)
        else:
            item_index, centre = int(rng.choice(len(self.items), p=self.weights)), None
        item = self.items[item_index]
        window = self._window(item, crop, rng) if self.augment else crop
        image, label = random_crop(
            item.image, item.label, window, rng, fill=self.mean[:, 0, 0], centre=centre
        )
        if window != crop:
            image, label = resample_crop(image, label, crop)
        if not self.augment:
            return image, label
        image, label = flip_rotate(image, label, rng)
        if not photometric:
            return image, label
        if self.hue_shift is not None:
            image = self.hue_shift.apply(image, label, rng, item.image.dtype)
        if self.color_jitter:
            image = jitter_colors(image, self.color_jitter, rng, item.image.dtype)
        if self.photometric is not None:
            image = self.photometric.apply(image, rng, _top(item.image.dtype))
        return image, label

    def _window(self, item: LabelledImage, crop: int, rng: np.random.Generator) -> int:
        """The edge of the window read for a ``crop`` (zoom: a window of crop/zoom resampled)."""
        if self.target_gsd is not None and item.gsd and rng.random() < self.target_gsd[1]:
            finest, coarsest = self.target_gsd[0]
            # Never zoom out so far that the window is mostly padding around a small image.
            coarsest = min(coarsest, item.gsd * 1.25 * max(item.image.shape[1:]) / crop)
            finest = min(finest, coarsest)
            target = float(np.exp(rng.uniform(np.log(finest), np.log(coarsest))))
            return max(int(round(crop * target / item.gsd)), 1)
        if self.scale is not None:
            zoom = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
            return max(int(round(crop / zoom)), 1)
        return crop

    def label_shares(self, num_codes: int, crops: int = 600) -> npt.NDArray[np.float64]:
        """Share of each label code among the labelled pixels of ``crops`` sampled crops.

        What the loss sees once crops are zoomed and class-balanced: its class weights and the
        prior correction follow these shares rather than the images' own.
        """
        rng = np.random.default_rng([self.seed, 7919])
        counts = np.zeros(num_codes, dtype=np.float64)
        for i in range(crops):
            _, label = self.sample(i, rng, photometric=False)
            counts += np.bincount(label.ravel(), minlength=256)[:num_codes]
        if counts.sum() == 0:
            raise TrainingError("the sampled training crops hold no labelled pixel")
        shares: npt.NDArray[np.float64] = counts / counts.sum()
        return shares


class ClassBalancedCentres:
    """Crop centres drawn class by class: a label code uniformly, then one of its pixels.

    Up to ``per_image`` pixel positions of each code are kept per image (a regular subsample),
    with each image's share of the code's pixels, so a rare class (Ohio's ponds, 1.4 % of the
    pixels) is cropped as often as a common one.
    """

    def __init__(self, items: Sequence[LabelledImage], per_image: int = 256) -> None:
        positions: dict[int, list[tuple[int, npt.NDArray[np.int64], float]]] = {}
        for index, item in enumerate(items):
            flat = item.label.ravel()
            for code in np.unique(flat):
                if code == IGNORE_INDEX:
                    continue
                where = np.flatnonzero(flat == code)
                step = max(len(where) // per_image, 1)
                positions.setdefault(int(code), []).append(
                    (index, where[::step][:per_image], float(len(where)))
                )
        if not positions:
            raise TrainingError("the training labels hold no labelled pixel")
        self.codes = sorted(positions)
        self.positions = positions
        self.widths = [item.label.shape[1] for item in items]

    def draw(self, rng: np.random.Generator) -> tuple[int, tuple[int, int]]:
        """An image index and a ``(row, col)`` centre on a pixel of a uniformly drawn code."""
        entries = self.positions[self.codes[int(rng.integers(len(self.codes)))]]
        counts = np.array([e[2] for e in entries])
        index, flat, _ = entries[int(rng.choice(len(entries), p=counts / counts.sum()))]
        pixel = int(flat[int(rng.integers(len(flat)))])
        width = self.widths[index]
        return index, (pixel // width, pixel % width)


def _top(dtype: npt.DTypeLike) -> float:
    """The brightest value of an image type (255 for uint8; 1 for float images)."""
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


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
            "group": item.group,
        }


def region_of(group: str) -> str:
    """The source a group belongs to (``"ohio/val"`` -> ``"ohio"``); ``all`` for one source."""
    return group.split("/", 1)[0] if "/" in group else "all"
