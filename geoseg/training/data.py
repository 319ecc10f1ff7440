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

The steps around loading have their own modules: :mod:`~geoseg.training.label_encoding` (mask
values to class ids), :mod:`~geoseg.training.augment` (crop augmentation) and
:mod:`~geoseg.training.datasets` (the torch datasets). Their names that training code reaches
through this module are imported here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import TrainingError
from geoseg.training.label_encoding import LabelEncoding, encode_labels, rasterize_vector_labels


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
    # The source's ground sample distance in metres (None: not stated).
    gsd: float | None = None

    @property
    def pixels(self) -> int:
        """Number of pixels."""
        return int(self.label.size)


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
    blocks: Mapping[str, Sequence[float]] | None = None,
    gsd: float | None = None,
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
        blocks: Spatial groups ``{name: [left, bottom, right, top]}`` in the images' CRS: an
            image whose centre lies in a block belongs to that group, whatever its folder.
        gsd: The source's ground sample distance (metres), kept with each image.
    """
    out = []
    for group, image_path, mask_path in folder_pairs(root, image_glob, mask_glob, pair_key, blocks):
        image = _select_bands(_read_array(image_path), bands, image_path)
        label = encode_labels(_read_array(mask_path), encoding, str(mask_path))
        if label.shape != image.shape[1:]:
            raise TrainingError(
                f"{image_path} is {image.shape[1:]} pixels but its mask {mask_path} is "
                f"{label.shape}; masks must align with their images"
            )
        name = group_prefix + str(image_path.relative_to(root))
        out.append(LabelledImage(name, group_prefix + group, image, label, gsd))
    return out


def folder_pairs(
    root: Path,
    image_glob: str,
    mask_glob: str,
    pair_key: str | None = None,
    blocks: Mapping[str, Sequence[float]] | None = None,
) -> list[tuple[str, Path, Path]]:
    """``(group, image, mask)`` for every image under ``root``, paired by group and stem.

    The group is the image's first folder under ``root``, or the name of the spatial block of
    ``blocks`` its centre lies in.

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
        out.append((block_of(image_path, blocks) or key[0], image_path, mask_path))
    return out


def block_of(path: Path, blocks: Mapping[str, Sequence[float]] | None) -> str | None:
    """The name of the block of ``blocks`` that holds the centre of georeferenced ``path``.

    Spatial blocks hold out a whole area (neighbouring tiles share fields, roads and light, so
    a random split of tiles leaks); ``None`` when no block holds it.

    Raises:
        TrainingError: when ``path`` has no georeferencing to place it by.
    """
    if not blocks:
        return None
    import rasterio

    with rasterio.open(path) as src:
        if src.crs is None:
            raise TrainingError(
                f"data.blocks needs georeferenced images, but {path} has no CRS; group it by "
                "folder instead"
            )
        b = src.bounds
    x, y = (b.left + b.right) / 2, (b.bottom + b.top) / 2
    for name, (left, bottom, right, top) in blocks.items():
        if left <= x < right and bottom <= y < top:
            return name
    return None


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


def iter_groups(items: Sequence[LabelledImage]) -> Iterator[tuple[str, int, int]]:
    """``(group, images, pixels)`` for a summary of what was loaded."""
    groups: dict[str, list[int]] = {}
    for item in items:
        entry = groups.setdefault(item.group, [0, 0])
        entry[0] += 1
        entry[1] += item.pixels
    for group, (n, px) in sorted(groups.items()):
        yield group, n, px
