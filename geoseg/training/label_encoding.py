"""Label encoding: how raw mask values (colours, integers, vector class values) become class ids.

A source's masks are colour-coded (each class has a ``mask_color``) or integer (each class has a
``value``, default its id); vector labels carry class values (numbers or names) in a column. The
training config says which (:func:`encoding_from_classes`, :func:`encoding_from_labels`), and
:func:`encode_labels` / :func:`rasterize_vector_labels` turn labels into ``(H, W)`` uint8 ids with
:data:`~geoseg.training.label_sets.IGNORE_INDEX` for unlabelled pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import TrainingError
from geoseg.training.label_sets import IGNORE_INDEX, LabelSets
from geoseg.types import ClassTable

#: Mask values where more than this share of labelled pixels maps to no class mean a wrong table.
MAX_UNMAPPED_SHARE = 0.01


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
    _reject_unmapped(keys, mapped, is_color, source)
    return label


def _reject_unmapped(
    keys: npt.NDArray[Any], mapped: npt.NDArray[np.bool_], is_color: bool, source: str
) -> None:
    """Raise when more than :data:`MAX_UNMAPPED_SHARE` of the mask matches no class or ignore."""
    unmapped = int((~mapped).sum())
    if unmapped > MAX_UNMAPPED_SHARE * keys.size:
        values, counts = np.unique(keys[~mapped], return_counts=True)
        top = values[np.argsort(counts)[::-1][:5]]
        shown = [f"#{int(v):06x}" for v in top] if is_color else [int(v) for v in top]
        raise TrainingError(
            f"{source}: {unmapped / keys.size:.1%} of the mask matches no class (most common "
            f"unmapped values: {shown}); add them to the classes or to data.ignore"
        )


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
