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
    ``mosaic`` (k > 1) lets a ``target_gsd`` window outgrow a small image: the image is laid,
    at a random cell, into a k x k patchwork of images of its own size and pixel size (drawn
    at random, each flipped or rotated), labels and all, and the window is read from that, so
    that small tiles can be seen at a pixel size many times their own.
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
        mosaic: int = 0,
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
        self.mosaic = int(mosaic)
        self._peers = mosaic_peers(self.items) if self.mosaic > 1 else {}
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
        window = self._window(item_index, crop, rng) if self.augment else crop
        source, labels = item.image, item.label
        if window > max(item.image.shape[1:]) and item_index in self._peers:
            source, labels, (top, left) = self._patchwork(item_index, rng)
            centre = None if centre is None else (centre[0] + top, centre[1] + left)
        image, label = random_crop(
            source, labels, window, rng, fill=self.mean[:, 0, 0], centre=centre
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

    def _window(self, index: int, crop: int, rng: np.random.Generator) -> int:
        """The edge of the window read for a ``crop`` (zoom: a window of crop/zoom resampled)."""
        item = self.items[index]
        if self.target_gsd is not None and item.gsd and rng.random() < self.target_gsd[1]:
            finest, coarsest = self.target_gsd[0]
            # Never zoom out so far that the window is mostly padding around a small image (or
            # around its patchwork).
            reach = max(item.image.shape[1:]) * (self.mosaic if index in self._peers else 1)
            coarsest = min(coarsest, item.gsd * 1.25 * reach / crop)
            finest = min(finest, coarsest)
            target = float(np.exp(rng.uniform(np.log(finest), np.log(coarsest))))
            return max(int(round(crop * target / item.gsd)), 1)
        if self.scale is not None:
            zoom = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
            return max(int(round(crop / zoom)), 1)
        return crop

    def _patchwork(
        self, index: int, rng: np.random.Generator
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8], tuple[int, int]]:
        """Image ``index`` at a random cell of a k x k patchwork of its peers; its offset."""
        item, k = self.items[index], self.mosaic
        (bands, h, w), peers = item.image.shape, self._peers[index]
        image = np.empty((bands, k * h, k * w), dtype=item.image.dtype)
        label = np.empty((k * h, k * w), dtype=np.uint8)
        own = int(rng.integers(k * k))
        for cell in range(k * k):
            piece = item if cell == own else self.items[peers[int(rng.integers(len(peers)))]]
            img, lab = piece.image, piece.label
            if cell != own and h == w:
                img, lab = flip_rotate(img, lab, rng)
            r, c = divmod(cell, k)
            image[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = img
            label[r * h : (r + 1) * h, c * w : (c + 1) * w] = lab
        r, c = divmod(own, k)
        return image, label, (r * h, c * w)

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


def mosaic_peers(items: Sequence[LabelledImage]) -> dict[int, list[int]]:
    """For each image, the images a patchwork may lay beside it: same shape, type, pixel size.

    Images with no stated pixel size, or with no peer, are left out (never laid into one).
    """
    kinds: dict[tuple[Any, ...], list[int]] = {}
    for index, item in enumerate(items):
        if item.gsd:
            kinds.setdefault((item.image.shape, item.image.dtype.str, item.gsd), []).append(index)
    return {i: group for group in kinds.values() if len(group) > 1 for i in group}


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
