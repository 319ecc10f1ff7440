"""The training recipe's data made compact enough to travel, and put back together on the device.

The device cannot see ``../shared/data``, so the pack carries the images of
``configs/train_default.yaml``'s sources, grouped exactly as geoseg groups them
(:func:`geoseg.training.data.folder_pairs`: first folders and spatial blocks):

- **held-out groups travel exact**, so that their scores mean what the CPU model's mean:
  JPEG/PNG images as their own bytes, GeoTIFF images as lossless WebP GeoTIFFs of the bands the
  recipe reads (same pixels, same georeferencing), colour masks as palette PNGs of the same
  colours where that is smaller; files the repository tracks already (``tests/data/ohio/val``)
  are referenced, not packed;
- **training images fill the rest of the budget**, taken in turn from each source and, within
  one, from each group: JPEG/PNG images as they are, GeoTIFF images as JPEG GeoTIFFs (quality
  90; the recipe itself JPEG-compresses crops as an augmentation).

``manifest.json`` lists every file with its group, role and encoding; :func:`assemble` builds
the folders the recipe's globs expect from it (standard library only: the device runs it before
anything is installed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import zip_longest
from pathlib import Path
from typing import Any

#: Quality of the JPEG GeoTIFFs that training GeoTIFF images travel as.
JPEG_QUALITY = 90


@dataclass(frozen=True)
class DataFile:
    """One image or mask of the pack: where the recipe finds it and where its bytes are."""

    path: str  # relative to its source's root, as the recipe's globs see it
    source: str  # the config's source name
    group: str  # geoseg's group (folder or spatial block)
    role: str  # "held_out" or "train"
    kind: str  # "image" or "mask"
    how: str  # copy | palette_png | webp_geotiff | jpeg_geotiff | tracked
    stored: str  # relative to the pack folder, or to the repository when how == "tracked"
    bytes: int


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tracked_copies(repo: Path, under: str = "tests/data") -> dict[str, str]:
    """``{sha256: repo-relative path}`` of the files the repository tracks under ``under``."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--", under], check=True, capture_output=True
    ).stdout
    names = [n for n in out.decode().split("\0") if n]
    return {_sha(repo / n): n for n in names if (repo / n).is_file()}


def _palette_png(path: Path) -> bytes | None:
    """The colour mask at ``path`` as a palette PNG of exactly its colours (None: > 256)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as opened:
        rgb = np.asarray(opened.convert("RGB"))
    wide = rgb.astype(np.uint32)
    codes = (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]
    colours, index = np.unique(codes.ravel(), return_inverse=True)
    if len(colours) > 256:
        return None
    image = Image.fromarray(index.reshape(rgb.shape[:2]).astype(np.uint8), "P")
    channels = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1)
    image.putpalette(channels.astype(np.uint8).ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _geotiff(path: Path, bands: Sequence[int] | None, *, lossless: bool) -> bytes | None:
    """``path``'s ``bands`` as a WebP-lossless or JPEG GeoTIFF (None: not 8-bit, 3 or 4 bands)."""
    import rasterio
    from rasterio.io import MemoryFile

    with rasterio.open(path) as src:
        chosen = list(bands) if bands else list(range(1, src.count + 1))
        if src.dtypes[0] != "uint8" or len(chosen) != 3:
            return None
        data = src.read(chosen)
        profile = {
            "driver": "GTiff", "width": src.width, "height": src.height, "count": 3,
            "dtype": "uint8", "crs": src.crs, "transform": src.transform,
        }  # fmt: skip
    if lossless:
        profile.update(compress="WEBP", webp_lossless=True)
    else:
        profile.update(compress="JPEG", jpeg_quality=JPEG_QUALITY, photometric="YCBCR")
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
        return bytes(memory.read())


def _encode(
    image: Path, mask: Path, bands: Sequence[int] | None, held_out: bool, tracked: dict[str, str]
) -> Iterator[tuple[str, str, bytes | None, Path]]:
    """``(kind, how, bytes or None for tracked/copied, original)`` for an image and its mask."""
    for kind, path in (("image", image), ("mask", mask)):
        if _sha(path) in tracked:
            yield kind, "tracked", None, path
            continue
        suffix = path.suffix.lower()
        if kind == "mask" and suffix == ".png":
            packed = _palette_png(path)
            if packed is not None and len(packed) < path.stat().st_size:
                yield kind, "palette_png", packed, path
                continue
        if kind == "image" and suffix in (".tif", ".tiff"):
            packed = _geotiff(path, bands, lossless=held_out)
            if packed is not None:
                yield kind, "webp_geotiff" if held_out else "jpeg_geotiff", packed, path
                continue
        yield kind, "copy", None, path


@dataclass(frozen=True)
class _Pair:
    source: str
    root: Path
    group: str
    image: Path
    mask: Path
    bands: tuple[int, ...] | None
    held_out: bool


def recipe_pairs(config: Path) -> tuple[list[_Pair], dict[str, str]]:
    """Every image/mask pair of the recipe's sources, grouped as geoseg groups them.

    Returns the pairs and ``{source name: root folder name}``.
    """
    from geoseg.training.config import load_config
    from geoseg.training.data import folder_pairs

    cfg = load_config(config)
    pairs, roots = [], {}
    for src in cfg.sources:
        if src.source != "folders" or src.root is None:
            raise SystemExit(f"source {src.name!r} is not a folder dataset; the pack carries those")
        roots[src.name] = src.root.name
        for group, image, mask in folder_pairs(
            src.root, src.images, src.masks, src.pair_key, src.blocks
        ):
            held_out = group in src.val_groups
            pairs.append(_Pair(src.name, src.root, group, image, mask, src.bands, held_out))
    return pairs, roots


def _round_robin(pairs: Sequence[_Pair], key: Callable[[_Pair], str]) -> list[_Pair]:
    """``pairs`` reordered to take one of each ``key`` (group or source) in turn."""
    by_key: dict[str, list[_Pair]] = {}
    for pair in pairs:
        by_key.setdefault(key(pair), []).append(pair)
    rounds = zip_longest(*(by_key[k] for k in sorted(by_key)))
    return [p for r in rounds for p in r if p is not None]


_Encoded = list[tuple[str, str, bytes | None, Path]]


def _choose(
    training: Sequence[tuple[_Pair, _Encoded, int]], budget: int
) -> tuple[list[tuple[_Pair, _Encoded, int]], dict[str, int]]:
    """Training pairs within ``budget``: each source an equal share, the unused part passed on.

    The source that needs least goes first, so a small source travels whole and a large one
    gets the rest; within a source, its groups take turns. Returns the chosen pairs and, per
    group, the count left out.
    """
    by_source: dict[str, list[tuple[_Pair, _Encoded, int]]] = {}
    for item in training:
        by_source.setdefault(item[0].source, []).append(item)
    order = sorted(by_source, key=lambda s: sum(c for *_, c in by_source[s]))
    chosen: list[tuple[_Pair, _Encoded, int]] = []
    skipped: dict[str, int] = {}
    left = budget
    for position, source in enumerate(order):
        share, used = left // (len(order) - position), 0
        cost_of = {id(pair): (pair, enc, cost) for pair, enc, cost in by_source[source]}
        pairs = _round_robin([p for p, _, _ in by_source[source]], lambda p: p.group)
        for pair in pairs:
            item = cost_of[id(pair)]
            if used + item[2] <= share:
                chosen.append(item)
                used += item[2]
            else:
                key = f"{pair.source}/{pair.group}"
                skipped[key] = skipped.get(key, 0) + 1
        left -= used
    return chosen, skipped


def pack_data(
    config: Path, repo: Path, out: Path, budget: int, *, train_images: int | None = None
) -> dict[str, Any]:
    """Write the recipe's data into ``out/data`` within ``budget`` bytes; the manifest part.

    ``train_images`` caps the training images, taken from the sources in turn (the dry run's
    pack needs a few).

    Raises:
        SystemExit: when the held-out groups alone exceed the budget.
    """
    pairs, roots = recipe_pairs(config)
    tracked = tracked_copies(repo)
    shutil.rmtree(out / "data", ignore_errors=True)

    def encoded(pair: _Pair) -> tuple[_Pair, _Encoded, int]:
        parts = list(_encode(pair.image, pair.mask, pair.bands, pair.held_out, tracked))
        return pair, parts, sum(_cost(how, data, path) for _, how, data, path in parts)

    held = [encoded(p) for p in pairs if p.held_out]
    held_bytes = sum(cost for *_, cost in held)
    if held_bytes > budget:
        raise SystemExit(
            f"the held-out groups alone need {held_bytes} bytes, over the data budget of {budget}"
        )
    training = [p for p in pairs if not p.held_out]
    if train_images is not None:
        by_group = _round_robin(training, lambda p: f"{p.source}/{p.group}")
        training = _round_robin(by_group, lambda p: p.source)[:train_images]
    chosen, skipped = _choose([encoded(p) for p in training], budget - held_bytes)
    files = [
        _store(out, repo, pair, roots, kind, how, data, path, tracked)
        for pair, parts, _ in held + chosen
        for kind, how, data, path in parts
    ]
    return {
        "sources": roots,
        "bytes": sum(f.bytes for f in files),
        "budget": budget,
        "files": [asdict(f) for f in files],
        "summary": summarise(files, skipped),
    }


def _cost(how: str, data: bytes | None, path: Path) -> int:
    if how == "tracked":
        return 0
    return len(data) if data is not None else path.stat().st_size


def _store(
    out: Path,
    repo: Path,
    pair: _Pair,
    roots: Mapping[str, str],
    kind: str,
    how: str,
    data: bytes | None,
    path: Path,
    tracked: Mapping[str, str],
) -> DataFile:
    """Write one file into the pack (or reference the tracked copy); its manifest entry."""
    relative = str(path.relative_to(pair.root))
    entry = DataFile(relative, pair.source, pair.group, "held_out" if pair.held_out else "train",
                     kind, how, "", 0)  # fmt: skip
    if how == "tracked":
        return replace(entry, stored=tracked[_sha(path)])
    stored = Path("data") / roots[pair.source] / relative
    (out / stored).parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        shutil.copyfile(path, out / stored)
    else:
        (out / stored).write_bytes(data)
    return replace(entry, stored=str(stored), bytes=(out / stored).stat().st_size)


def summarise(files: Sequence[DataFile], skipped: Mapping[str, int]) -> dict[str, Any]:
    """Images, bytes and encodings per source/group and role; training images left out."""
    groups: dict[str, dict[str, Any]] = {}
    for f in files:
        g = groups.setdefault(f"{f.source}/{f.group}", {"role": f.role, "images": 0, "bytes": 0})
        g["images"] += f.kind == "image"
        g["bytes"] += f.bytes
        g.setdefault("how", set()).add(f.how)
    for g in groups.values():
        g["how"] = sorted(g["how"])
    return {"groups": groups, "train_images_left_out": dict(skipped)}


def assemble(
    manifest: Mapping[str, Any], pack: Path, repo: Path, dest: Path, *, limit: int | None = None
) -> dict[str, Path]:
    """Build the recipe's source folders under ``dest`` from symbolic links; their roots.

    ``limit`` keeps only the first that many images of each group (the dry run's few tiles).
    """
    shutil.rmtree(dest, ignore_errors=True)
    kept: dict[str, int] = {}
    data = manifest["data"]
    for entry in data["files"]:
        key = f"{entry['source']}/{entry['group']}"
        if entry["kind"] == "image":
            kept[key] = kept.get(key, 0) + 1
            if limit is not None and kept[key] > limit:
                continue
        elif limit is not None and kept.get(key, 0) > limit:
            continue
        base = repo if entry["how"] == "tracked" else pack
        target = dest / data["sources"][entry["source"]] / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((base / entry["stored"]).resolve(), target)
    return {name: dest / folder for name, folder in data["sources"].items()}


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """The pack's manifest as indented JSON."""
    path.write_text(json.dumps(manifest, indent=1, default=str) + "\n")
