"""Training data: labelled images loaded once into memory, random crops and whole-image validation.

Two sources are understood, both described in the training YAML (see :mod:`geoseg.training.train`):

* ``folders``: image/mask pairs found by glob under a root folder (JPEG/PNG/GeoTIFF). Masks are
  colour-coded (each class has a ``mask_color``) or integer (each class has a ``value``, default
  its id). The first path component under the root is the *group* (e.g. ``tile_3``): the split
  into training and validation is by whole group, so neighbouring patches never leak across.
* ``rasters``: georeferenced scenes, each a GeoTIFF image plus a label raster or vector labels
  (GeoPackage/GeoJSON polygons with a class field) rasterized onto the image grid. Each scene is
  its own group.

Images are small enough (tens of megapixels) to hold in RAM, which makes random crops cheap; they
stay in their own dtype and are normalised per crop.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import TrainingError
from geoseg.training.label_sets import IGNORE_INDEX as IGNORE_INDEX
from geoseg.training.label_sets import LabelSets
from geoseg.types import ClassTable

if TYPE_CHECKING:
    import torch

#: Mask values where more than this share of labelled pixels maps to no class mean a wrong table.
MAX_UNMAPPED_SHARE = 0.01


@dataclass(frozen=True)
class LabelledImage:
    """One image and its label raster, aligned pixel for pixel.

    ``image`` is ``(C, H, W)`` in the image's own dtype; ``label`` is ``(H, W)`` uint8 with class
    ids and :data:`IGNORE_INDEX` for unlabelled pixels.
    """

    name: str
    group: str
    image: npt.NDArray[Any]
    label: npt.NDArray[np.uint8]

    @property
    def pixels(self) -> int:
        """Number of pixels."""
        return int(self.label.size)


@dataclass(frozen=True)
class LabelEncoding:
    """How raw mask values become class ids.

    ``colors`` maps packed ``0xRRGGBB`` mask colours to ids (colour-coded masks); ``values`` maps
    raw integer (or, for vectors, string) labels to ids. Anything listed in ``ignore`` becomes
    :data:`IGNORE_INDEX`.
    """

    colors: Mapping[int, int]
    values: Mapping[Any, int]
    ignore_colors: frozenset[int]
    ignore_values: frozenset[Any]


def pack_rgb(rgb: npt.NDArray[Any]) -> npt.NDArray[np.int32]:
    """``(..., 3)`` uint8 colours to ``0xRRGGBB`` integers."""
    rgb = rgb.astype(np.int32)
    packed: npt.NDArray[np.int32] = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return packed


def _pack_color(color: Sequence[int]) -> int:
    r, g, b = (int(v) for v in color)
    return (r << 16) | (g << 8) | b


def encode_labels(
    raw: npt.NDArray[Any], encoding: LabelEncoding, source: str
) -> npt.NDArray[np.uint8]:
    """Class ids ``(H, W)`` uint8 from a raw mask (``(H, W, 3+)`` colours or ``(H, W)`` integers).

    A mask with three or more channels is read as colours, a single-channel one as integers.

    Raises:
        TrainingError: when the encoding has no table for this kind of mask, or when more than
            1% of the pixels match neither a class nor an ignore value (a wrong class table).
    """
    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim == 3:
        if not encoding.colors:
            raise TrainingError(
                f"{source} is a colour mask ({raw.shape[-1]} channels) but the classes have no "
                "'mask_color'; add mask colours or use single-band integer masks"
            )
        keys = pack_rgb(raw[..., :3])
        table: Mapping[Any, int] = encoding.colors
        ignore: frozenset[Any] = encoding.ignore_colors
    else:
        if not encoding.values:
            raise TrainingError(
                f"{source} is a single-band integer mask but the classes are given by "
                "'mask_color'; use colour masks or give the classes a 'value'"
            )
        keys = raw.astype(np.int64)
        table, ignore = encoding.values, encoding.ignore_values
    is_color = raw.ndim == 3
    label = np.full(keys.shape, IGNORE_INDEX, dtype=np.uint8)
    mapped = np.zeros(keys.shape, dtype=bool)
    for key, class_id in table.items():
        if not isinstance(key, int | np.integer):
            continue  # class names, for vector labels only
        hit = keys == key
        label[hit] = class_id
        mapped |= hit
    for key in ignore:
        if isinstance(key, int | np.integer):
            mapped |= keys == key
    unmapped = int((~mapped).sum())
    if unmapped > MAX_UNMAPPED_SHARE * keys.size:
        values, counts = np.unique(keys[~mapped], return_counts=True)
        top = values[np.argsort(counts)[::-1][:5]]
        shown = [f"#{int(v):06x}" for v in top] if is_color else [int(v) for v in top]
        raise TrainingError(
            f"{source}: {unmapped / keys.size:.1%} of the mask matches no class (most common "
            f"unmapped values: {shown}); add them to the classes or to data.ignore"
        )
    return label


def _read_array(path: Path) -> npt.NDArray[Any]:
    """An image file as ``(H, W, C)`` (PIL for JPEG/PNG, rasterio for everything else)."""
    if path.suffix.lower() in {".jpg", ".jpeg", ".png"}:
        from PIL import Image

        with Image.open(path) as opened:
            arr = np.asarray(opened.convert("RGB") if opened.mode in ("P", "PA") else opened)
        return arr if arr.ndim == 3 else arr[..., None]
    import rasterio

    with rasterio.open(path) as src:
        return np.moveaxis(src.read(), 0, -1)


def load_folder_pairs(
    root: Path,
    image_glob: str,
    mask_glob: str,
    encoding: LabelEncoding,
    *,
    bands: Sequence[int] | None = None,
    pair_key: str | None = None,
    group_prefix: str = "",
) -> list[LabelledImage]:
    r"""Image/mask pairs under ``root`` matched by group (first folder) and file stem.

    Args:
        root: Dataset folder.
        image_glob: Glob of images relative to ``root`` (e.g. ``tile_*/images/*.jpg``).
        mask_glob: Glob of masks relative to ``root`` (e.g. ``tile_*/masks/*.png``).
        encoding: How mask values become class ids.
        bands: 1-based image bands to keep (all when ``None``).
        pair_key: A regular expression whose first group, matched on both stems, pairs an
            image with its mask (``(\d+)$`` pairs ``tile_7`` with ``mask_7``); default: equal
            stems.
        group_prefix: Put before each group name (``"ohio/"``), so sources stay apart.
    """
    out = []
    for group, image_path, mask_path in folder_pairs(root, image_glob, mask_glob, pair_key):
        image = _select_bands(_read_array(image_path), bands, image_path)
        label = encode_labels(_read_array(mask_path), encoding, str(mask_path))
        if label.shape != image.shape[1:]:
            raise TrainingError(
                f"{image_path} is {image.shape[1:]} pixels but its mask {mask_path} is "
                f"{label.shape}; masks must align with their images"
            )
        name = group_prefix + str(image_path.relative_to(root))
        out.append(LabelledImage(name, group_prefix + group, image, label))
    return out


def folder_pairs(
    root: Path, image_glob: str, mask_glob: str, pair_key: str | None = None
) -> list[tuple[str, Path, Path]]:
    """``(group, image, mask)`` for every image under ``root``, paired by group and stem.

    Raises:
        TrainingError: for a missing root, no image, or an image without its mask.
    """
    if not root.is_dir():
        raise TrainingError(f"data.root {root} is not a folder; check the path in the config")
    images = sorted(root.glob(image_glob))
    masks: dict[tuple[str, str], Path] = {}
    for path in sorted(root.glob(mask_glob)):
        key = _pair_key(path, root, pair_key)
        if key in masks:
            raise TrainingError(
                f"masks {masks[key]} and {path} both pair with key {key[1]!r} in group "
                f"{key[0]!r}; make data.pair_key (or the file names) tell them apart"
            )
        masks[key] = path
    if not images:
        raise TrainingError(f"data.images {image_glob!r} matches no file under {root}")
    out = []
    for image_path in images:
        key = _pair_key(image_path, root, pair_key)
        mask_path = masks.get(key)
        if mask_path is None:
            raise TrainingError(
                f"no mask for {image_path} (looked for stem {key[1]!r} in group {key[0]!r} "
                f"matching data.masks {mask_glob!r})"
            )
        out.append((key[0], image_path, mask_path))
    return out


def _pair_key(path: Path, root: Path, pattern: str | None = None) -> tuple[str, str]:
    parts = path.relative_to(root).parts
    group = parts[0] if len(parts) > 1 else path.stem
    if pattern is None:
        return (group, path.stem)
    match = re.search(pattern, path.stem)
    if match is None:
        raise TrainingError(f"data.pair_key {pattern!r} does not match the file name {path.name}")
    return (group, match.group(1))


def _select_bands(
    hwc: npt.NDArray[Any], bands: Sequence[int] | None, path: Path
) -> npt.NDArray[Any]:
    chw = np.ascontiguousarray(np.moveaxis(hwc, -1, 0))
    if bands is None:
        return chw
    if any(not 1 <= b <= chw.shape[0] for b in bands):
        raise TrainingError(
            f"{path} has {chw.shape[0]} bands but data.bands asks for {list(bands)} (1-based)"
        )
    return np.ascontiguousarray(chw[[b - 1 for b in bands]])


def load_raster_scene(
    image_path: Path,
    labels_path: Path,
    encoding: LabelEncoding,
    *,
    class_field: str | None = None,
    bands: Sequence[int] | None = None,
) -> LabelledImage:
    """A georeferenced image and its labels (a raster on the same grid, or vector polygons).

    Vector labels are reprojected to the image CRS and rasterized onto its grid; pixels no polygon
    covers are ignored. Their ``class_field`` holds class values (numbers or names) that
    ``encoding.values`` maps to ids.
    """
    import rasterio

    if not image_path.exists():
        raise TrainingError(f"training image {image_path} does not exist")
    if not labels_path.exists():
        raise TrainingError(f"training labels {labels_path} do not exist")
    with rasterio.open(image_path) as src:
        image = src.read() if bands is None else None
        if bands is not None:
            if any(not 1 <= b <= src.count for b in bands):
                raise TrainingError(
                    f"{image_path} has {src.count} bands but data.bands asks for {list(bands)}"
                )
            image = src.read(list(bands))
        shape, transform, crs = (src.height, src.width), src.transform, src.crs
    assert image is not None
    if labels_path.suffix.lower() in {".gpkg", ".geojson", ".json", ".shp", ".fgb"}:
        label = rasterize_vector_labels(
            labels_path, shape, transform, crs, encoding, class_field=class_field
        )
    else:
        with rasterio.open(labels_path) as lab:
            if (lab.height, lab.width) != shape:
                raise TrainingError(
                    f"label raster {labels_path} is {lab.height}x{lab.width} but {image_path} "
                    f"is {shape[0]}x{shape[1]}; labels must be on the image grid"
                )
            raw = np.moveaxis(lab.read(), 0, -1)
            nodata = lab.nodata
        if nodata is not None and raw.shape[-1] == 1:
            # The label raster's own nodata means "not labelled" whatever the class table says.
            encoding = dataclasses.replace(
                encoding, ignore_values=encoding.ignore_values | {int(nodata)}
            )
        label = encode_labels(raw, encoding, str(labels_path))
    return LabelledImage(image_path.stem, image_path.stem, image, label)


def rasterize_vector_labels(
    path: Path,
    shape: tuple[int, int],
    transform: Any,
    crs: Any,
    encoding: LabelEncoding,
    *,
    class_field: str | None,
) -> npt.NDArray[np.uint8]:
    """Burn labelled polygons onto an image grid; ``(H, W)`` uint8, 255 where none falls."""
    import geopandas as gpd
    from rasterio.features import rasterize

    if not class_field:
        raise TrainingError(f"vector labels {path} need 'class_field' naming the class column")
    frame = gpd.read_file(path)
    if class_field not in frame.columns:
        raise TrainingError(
            f"vector labels {path} have no column {class_field!r} (class_field); "
            f"columns: {[c for c in frame.columns if c != 'geometry']}"
        )
    if frame.crs is not None and crs is not None and frame.crs != crs:
        frame = frame.to_crs(crs)
    shapes = []
    unknown = set()
    for geom, value in zip(frame.geometry, frame[class_field], strict=True):
        if geom is None or geom.is_empty:
            continue
        key = value.item() if hasattr(value, "item") else value
        if key in encoding.ignore_values:
            continue
        class_id = encoding.values.get(key)
        if class_id is None:
            unknown.add(key)
            continue
        shapes.append((geom, class_id))
    if unknown:
        raise TrainingError(
            f"vector labels {path}: values {sorted(map(str, unknown))[:10]} of {class_field!r} "
            "match no class; give each class a 'value' (or use class names)"
        )
    if not shapes:
        return np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    burned: npt.NDArray[np.uint8] = rasterize(
        shapes, out_shape=shape, transform=transform, fill=IGNORE_INDEX, dtype="uint8"
    )
    return burned


def split_by_group(
    items: Sequence[LabelledImage], val_groups: Sequence[str]
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Training and validation images; a group (tile or scene) lands wholly on one side."""
    groups = {item.group for item in items}
    missing = sorted(set(val_groups) - groups)
    if missing:
        raise TrainingError(
            f"data.val_groups {missing} match no group; groups found: {sorted(groups)}"
        )
    train = [i for i in items if i.group not in val_groups]
    val = [i for i in items if i.group in val_groups]
    if not train:
        raise TrainingError("data.val_groups holds every group; leave at least one for training")
    if not val:
        raise TrainingError("data.val_groups is empty; name at least one group for validation")
    return train, val


def band_statistics(items: Sequence[LabelledImage]) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation over every pixel of ``items`` (image units)."""
    bands = items[0].image.shape[0]
    total = np.zeros(bands)
    total_sq = np.zeros(bands)
    count = 0
    for item in items:
        flat = item.image.reshape(bands, -1).astype(np.float64)
        total += flat.sum(axis=1)
        total_sq += (flat * flat).sum(axis=1)
        count += flat.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))
    return [float(v) for v in mean], [float(v) for v in std]


def class_frequencies(items: Sequence[LabelledImage], num_classes: int) -> npt.NDArray[np.float64]:
    """Share of labelled pixels per class (ignored pixels excluded).

    With set-valued labels, ``num_classes`` counts the label codes (classes, then sets).
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    for item in items:
        counts += np.bincount(item.label.ravel(), minlength=256)[:num_classes]
    total = counts.sum()
    if total == 0:
        raise TrainingError("the training masks hold no labelled pixel of any class")
    freq: npt.NDArray[np.float64] = counts / total
    return freq


def inverse_frequency_weights(freq: npt.NDArray[np.float64], power: float = 0.5) -> list[float]:
    """Class weights ``freq ** -power`` scaled to mean 1 (absent classes get weight 0).

    ``power=0.5`` (inverse square root) lifts rare classes without letting a class of a few
    pixels dominate the loss.
    """
    weights = np.zeros_like(freq)
    present = freq > 0
    weights[present] = freq[present] ** -power
    weights[present] /= weights[present].mean()
    return [float(w) for w in weights]


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


def random_crop(
    image: npt.NDArray[Any],
    label: npt.NDArray[np.uint8],
    crop: int,
    rng: np.random.Generator,
    *,
    fill: npt.ArrayLike = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]:
    """A ``crop`` x ``crop`` window at a random place, padded with ``fill`` (per band) and 255."""
    _, h, w = image.shape
    r = int(rng.integers(0, max(h - crop, 0) + 1))
    c = int(rng.integers(0, max(w - crop, 0) + 1))
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
    """

    class_ids: tuple[int, ...]
    degrees: float = 180.0
    probability: float = 0.5
    brightness: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not self.class_ids:
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
        if image.shape[0] != 3 or rng.random() >= self.probability:
            return image
        mask = np.isin(label, self.class_ids)
        if not mask.any():
            return image
        angle = np.deg2rad(rng.uniform(-self.degrees, self.degrees))
        out = np.asarray(image, dtype=np.float32).copy()
        low, high = self.brightness
        gain = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        out[:, mask] = (hue_rotation(angle) * gain) @ out[:, mask]
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


def iter_groups(items: Sequence[LabelledImage]) -> Iterator[tuple[str, int, int]]:
    """``(group, images, pixels)`` for a summary of what was loaded."""
    groups: dict[str, list[int]] = {}
    for item in items:
        entry = groups.setdefault(item.group, [0, 0])
        entry[0] += 1
        entry[1] += item.pixels
    for group, (n, px) in sorted(groups.items()):
        yield group, n, px


def encoding_from_classes(
    classes: Sequence[Mapping[str, Any]],
    table: ClassTable,
    ignore: Sequence[Any],
) -> LabelEncoding:
    """A :class:`LabelEncoding` from the config's class entries and ``data.ignore`` list.

    A class with ``mask_color`` makes the masks colour-coded (then every class needs one);
    otherwise each class matches its ``value`` (default: its id) and, for vector labels, its name.
    """
    with_color = [c for c in classes if "mask_color" in c]
    if with_color and len(with_color) != len(classes):
        raise TrainingError(
            "either every class has 'mask_color' (colour-coded masks) or none does "
            f"(integer masks); found it on {len(with_color)} of {len(classes)}"
        )
    colors: dict[int, int] = {}
    values: dict[Any, int] = {}
    for entry, info in zip(classes, table, strict=True):
        if with_color:
            colors[_pack_color(entry["mask_color"])] = info.id
        else:
            values[entry.get("value", info.id)] = info.id
            values.setdefault(info.name, info.id)
    return LabelEncoding(colors, values, *_ignored(ignore))


def encoding_from_labels(
    labels: Sequence[Mapping[str, Any]],
    table: ClassTable,
    sets: LabelSets,
    ignore: Sequence[Any],
) -> LabelEncoding:
    """A :class:`LabelEncoding` from one source's own label table (``data.labels``).

    Each entry maps a mask colour or value to a legend class, or to a list of classes (a
    set-valued label, whose code :class:`geoseg.training.label_sets.LabelSets` gives).
    """
    colors: dict[int, int] = {}
    values: dict[Any, int] = {}
    for entry in labels:
        wanted = entry["classes"]
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        code = sets.code_for([table.names.index(n) for n in names])
        if "mask_color" in entry:
            colors[_pack_color(entry["mask_color"])] = code
        else:
            values[entry["value"]] = code
    return LabelEncoding(colors, values, *_ignored(ignore))


def _ignored(ignore: Sequence[Any]) -> tuple[frozenset[int], frozenset[Any]]:
    """``data.ignore`` split into packed mask colours and plain values."""
    colors = frozenset(
        _pack_color(v) for v in ignore if isinstance(v, list | tuple) and len(v) == 3
    )
    return colors, frozenset(v for v in ignore if not isinstance(v, list | tuple))
