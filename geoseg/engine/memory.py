"""Will a run fit in memory? A peak estimate per setting, checked before anything is written.

A run holds, at its peak: a few batches of tiles (read, normalised, queued for the model and for
the stitcher), the model's activations for one batch, the class probabilities of the batches
waiting to be stitched, and the stitcher's blended bands, which span the scene width. Only the
activations are hard to know exactly; :data:`ACTIVATION_BYTES_PER_PIXEL` is a generous heuristic
from measured peaks (fp32 on CPU, 512 px tiles, 4 bands, 6 classes: U-Net/ResNet-34 640 B/px,
DeepLabV3+/ResNet-50 800 B/px, U-Net/EfficientNet-B0 490 B/px). On CUDA the activations live on
the GPU and are checked against its free memory instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from geoseg.engine.tiling import round_up
from geoseg.errors import InsufficientMemoryError

#: Peak bytes of model activations per input pixel and tile in a batch (see the module docs).
ACTIVATION_BYTES_PER_PIXEL = 1024
#: Batches alive besides the prefetched ones: one in the model, two queued and one being stitched.
IN_FLIGHT_BATCHES = 4
#: Suggested settings aim at this share of what is available, leaving room for everything else.
HEADROOM = 0.5


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one run, by what holds them."""

    tiles: int  # inputs read and normalised, queued for the model and the stitcher
    activations: int  # the model's forward pass over one batch
    probabilities: int  # model outputs queued for stitching
    stitching: int  # blended bands across the scene width and rows waiting for the writers

    @property
    def total(self) -> int:
        """All of it."""
        return self.tiles + self.activations + self.probabilities + self.stitching

    def on_host(self, device_type: str) -> int:
        """What lives in main memory: everything, except the activations on a GPU."""
        return self.total - (self.activations if device_type == "cuda" else 0)

    def on_device(self, device_type: str) -> int:
        """What lives on the GPU (0 on the CPU): activations plus one batch in and out."""
        if device_type != "cuda":
            return 0
        return self.activations + (self.tiles + self.probabilities) // IN_FLIGHT_BATCHES

    def describe(self) -> str:
        """``model 1.2 GB, tiles 80 MB, ...``."""
        parts = [("model", self.activations), ("tiles", self.tiles),
                 ("probabilities", self.probabilities), ("stitching", self.stitching)]  # fmt: skip
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in parts)


def estimate_memory(
    *,
    tile_height: int,
    tile_width: int,
    bands: int,
    classes: int,
    batch_size: int,
    scene_width: int,
    block_size: int,
    prefetch_batches: int = 2,
    probabilities: bool = False,
) -> MemoryEstimate:
    """Estimate the peak memory of a run over tiles of ``tile_height x tile_width`` pixels."""
    pixels = tile_height * tile_width
    batch_pixels = batch_size * pixels
    batches = prefetch_batches + IN_FLIGHT_BATCHES
    # float32 inputs plus the raw read they came from, and a validity mask
    tiles = batches * batch_pixels * (bands * 8 + 2)
    probs = IN_FLIGHT_BATCHES * batch_pixels * classes * 4
    activations = batch_pixels * ACTIVATION_BYTES_PER_PIXEL
    sums = (classes + 2) * 4  # float32 class sums, weight and valid count per pixel
    stitch = tile_height * scene_width * sums * 2  # the carried band below and the next one
    stitch += 2 * pixels * sums  # the tile being blended and the band carried to its right
    out_bytes = 2 + (classes if probabilities else 0)  # classes, confidence, probabilities
    stitch += (tile_height + block_size) * scene_width * out_bytes  # band + writers' pending rows
    return MemoryEstimate(tiles, activations, probs, stitch)


def available_memory(device: str = "cpu") -> int:
    """Bytes free for a run: main memory (``psutil``) or, for ``cuda``, the GPU's free memory."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(
    *,
    tile_height: int,
    tile_width: int,
    bands: int,
    classes: int,
    batch_size: int,
    scene_width: int,
    block_size: int,
    multiple: int = 1,
    prefetch_batches: int = 2,
    probabilities: bool = False,
    device: str = "cpu",
    host_available: int | None = None,
    device_available: int | None = None,
) -> MemoryEstimate:
    """Refuse settings whose estimate exceeds the memory available, suggesting ones that fit.

    ``tile_height``/``tile_width`` are the tile extent actually used (a tile never exceeds the
    scene); ``multiple`` is the model's output stride, which suggested tile sizes respect.

    Raises:
        InsufficientMemoryError: with the estimate, what is available and smaller settings.
    """
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def estimate_for(height: int, width: int, batch: int) -> MemoryEstimate:
        return estimate_memory(
            tile_height=height, tile_width=width, bands=bands, classes=classes,
            batch_size=batch, scene_width=scene_width, block_size=block_size,
            prefetch_batches=prefetch_batches, probabilities=probabilities,
        )  # fmt: skip

    estimate = estimate_for(tile_height, tile_width, batch_size)
    budgets: list[tuple[str, Callable[[MemoryEstimate], int], int]] = [
        ("memory", lambda est: est.on_host(device_type),
         host_available if host_available is not None else available_memory("cpu")),
    ]  # fmt: skip
    if device_type == "cuda":
        free_gpu = device_available if device_available is not None else available_memory(device)
        budgets.append(("GPU memory", lambda est: est.on_device(device_type), free_gpu))
    over = [(what, need(estimate), free) for what, need, free in budgets if need(estimate) > free]
    if not over:
        return estimate

    def fits(tile: int, batch: int) -> bool:
        est = estimate_for(min(tile, tile_height), min(tile, tile_width), batch)
        return all(need(est) <= free * HEADROOM for _, need, free in budgets)

    tile, batch = _suggest(max(tile_height, tile_width), batch_size, multiple, fits)
    fix = (
        f"use --tile-size {tile} --batch-size {batch} or smaller"
        if tile
        else "free some memory or use a machine with more"
    )
    what, needed, free = over[0]
    raise InsufficientMemoryError(
        f"tiles of {tile_height} x {tile_width} px in batches of {batch_size} need about "
        f"{format_bytes(needed)} of {what} ({estimate.describe()}) but only "
        f"{format_bytes(free)} is available; {fix}"
    )


def _suggest(
    tile_size: int, batch_size: int, multiple: int, fits: Callable[[int, int], bool]
) -> tuple[int, int]:
    """The largest tile and then batch size that ``fits`` (within :data:`HEADROOM`).

    Tiles shrink through powers of two (1024, 512, ...), sizes that suit every encoder's stride.
    ``(0, 0)`` when not even the smallest tile fits.
    """
    tile = round_up(tile_size, multiple)
    while tile > multiple and not fits(tile, 1):
        below = 1 << ((tile - 1).bit_length() - 1)  # the largest power of two under tile
        tile = max(multiple, round_up(below, multiple))
    if not fits(tile, 1):
        return 0, 0
    batch = batch_size
    while batch > 1 and not fits(tile, batch):
        batch //= 2
    return tile, batch


def format_bytes(n: int) -> str:
    """``1.5 GB`` (powers of 1000, as free memory is usually quoted)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover
