"""Batched model inference: normalisation, device and precision choice, overlapped tile reads.

Tiles are read and normalised by background threads while the model runs; on CUDA, batches are
pinned and copied without blocking, and the forward pass runs under autocast (fp16 by default).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from geoseg.config import resolve_tta
from geoseg.errors import ConfigError
from geoseg.model import SegmentationModel
from geoseg.model.device import resolve_device
from geoseg.types import PixelWindow, Stretch, Tile

T = TypeVar("T")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a device and precision setting (``None``: full fp32)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision in ("fp16", "auto"):
        if device.type != "cuda":
            raise ConfigError(
                "fp16 precision needs a CUDA device; use --precision fp32 or bf16 on CPU"
            )
        return torch.float16
    raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")


@dataclass
class TileBatch:
    """Tiles read together: normalised inputs for the ones to infer, masks for all."""

    tiles: list[Tile]
    valid: list[np.ndarray]  # (th, tw) bool per tile
    run: list[int]  # positions in ``tiles`` that hold valid pixels (the others are skipped)
    inputs: np.ndarray  # (len(run), C, th, tw) float32, normalised, invalid pixels set to 0


#: Test-time augmentations as ``(quarter turns, mirror left-right first)`` pairs. ``mirror`` is
#: the tile and its left-right mirror; ``flips`` the group of mirrors (identity, left-right,
#: up-down = turn 2 of left-right, both = turn 2); ``d4`` adds the quarter turns: all 8
#: symmetries of the square.
TTA_TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "mirror": ((0, False), (0, True)),
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, mirror) for mirror in (False, True) for k in range(4)),
}


def tta_forward(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """Apply one dihedral transform to the last two axes of ``(N, C, H, W)``."""
    if mirror:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def tta_inverse(y: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """Undo :func:`tta_forward` on model outputs ``(N, K, H', W')``."""
    if turns:
        y = torch.rot90(y, -turns, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if mirror else y


class Predictor:
    """Runs a :class:`SegmentationModel` on batches of normalised tiles and returns probabilities.

    With test-time augmentation (``tta`` ``mirror``, ``flips`` or ``d4``; None: the model card's
    default, else none) each batch is also run transformed; every output is transformed back and
    the softmax probabilities are averaged, so the cost is 2, 4 or 8 forward passes per tile.
    """

    def __init__(
        self,
        model: SegmentationModel,
        device: str | None = "auto",
        precision: str = "auto",
        *,
        tta: str | None = None,
    ) -> None:
        tta = resolve_tta(tta, model.card.tta)
        if tta not in TTA_TRANSFORMS:
            raise ConfigError(f"unknown --tta {tta!r}; use one of {', '.join(TTA_TRANSFORMS)}")
        self.model = model
        self.tta = tta
        self.device = resolve_device(device)
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.module = model.module.to(self.device).eval()
        if self.device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)

    @property
    def description(self) -> str:
        """Device and precision, as reported at the start of a run."""
        extra = "" if self.tta == "none" else f", tta {self.tta} x{len(TTA_TRANSFORMS[self.tta])}"
        runtime = getattr(self.module, "runtime", "")  # "onnxruntime" for an ONNX model
        extra += f", {runtime}" if runtime else ""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"{self.device} ({name}, {self.amp_dtype or 'fp32'}{extra})"
        reason = "" if torch.cuda.is_available() else ", no CUDA device found"
        return f"cpu ({torch.get_num_threads()} threads{reason}{extra})"

    @torch.inference_mode()
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K, H, W)`` float32 for normalised inputs ``(N, C, H, W)``."""
        batch = torch.from_numpy(inputs)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last)
        transforms = TTA_TRANSFORMS[self.tta]
        total: torch.Tensor | None = None
        for turns, mirror in transforms:
            view = tta_forward(batch, turns, mirror)
            if self.device.type == "cuda":
                view = view.contiguous(memory_format=torch.channels_last)
            probs = tta_inverse(torch.softmax(self._forward(view).float(), dim=1), turns, mirror)
            total = probs if total is None else total.add_(probs)
        assert total is not None
        if len(transforms) > 1:
            total.div_(len(transforms))
        return total.cpu().numpy()

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                return self.module(batch)  # type: ignore[no-any-return]
        return self.module(batch)  # type: ignore[no-any-return]


class Normaliser:
    """``(x - mean) / std`` per band; invalid pixels become 0 (the normalised mean).

    With a :class:`~geoseg.types.Stretch`, scene values are first mapped into the model's units
    (``x * gain + bias``, clipped to the model's value range).
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], stretch: Stretch | None = None
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.scale = (1.0 / np.asarray(std, dtype=np.float32))[:, None, None]
        self.stretch: tuple[np.ndarray, np.ndarray, float, float] | None = None
        if stretch is not None:
            gain, bias = (np.asarray(v, dtype=np.float32)[:, None, None]
                          for v in stretch.gain_bias())  # fmt: skip
            self.stretch = (gain, bias, *stretch.out_range)

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Normalise ``data`` (C, H, W); pixels where ``valid`` (H, W) is False become 0."""
        if self.stretch is not None:
            gain, bias, low, high = self.stretch
            data = np.clip(data * gain + bias, np.float32(low), np.float32(high))
        out = (data - self.mean) * self.scale
        out *= valid[None]
        return out


def read_batches(
    tiles: Sequence[Tile],
    read: Callable[[PixelWindow], tuple[np.ndarray, np.ndarray]],
    normalise: Normaliser,
    batch_size: int,
    threads: int = 2,
) -> Iterator[TileBatch]:
    """Read tiles in order and group them into batches; all-nodata tiles are marked, not run."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="geoseg-read") as pool:
        for start in range(0, len(tiles), batch_size):
            chunk = list(tiles[start : start + batch_size])
            results = list(pool.map(lambda t: read(t.read_window), chunk))
            valid = [v for _, v in results]
            run = [i for i, v in enumerate(valid) if v.any()]
            if run:
                inputs = np.stack([normalise(results[i][0], valid[i]) for i in run])
            else:
                inputs = np.zeros((0,), dtype=np.float32)
            yield TileBatch(chunk, valid, run, inputs)


def prefetch(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, keeping up to ``depth`` ready ahead.

    Exceptions raised while producing are re-raised in the consumer; closing the consumer stops
    the producer.
    """
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=produce, name="geoseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
