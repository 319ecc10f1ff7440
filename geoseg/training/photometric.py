"""Sensor and season changes of a crop: what differs between cameras, years and places.

A model trained on two regions learns their colours unless told not to. :class:`SensorJitter`
draws, per crop, what another sensor, processing chain or season would have done to the same
ground: a gain and a gamma per band (colour balance and tone curve), brightness, contrast and
haze, saturation and hue, blur or sharpening (optics, resampling, pan-sharpening), noise and JPEG
compression. Every class is changed alike, so no colour is a shortcut to a class. Crops are
``(C, H, W)`` float32 in the image's units (0-255 for uint8); RGB-only steps (saturation, hue,
JPEG) are skipped for other band counts.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import ConfigError
from geoseg.training.augment import hue_rotation

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SensorJitter:
    """Random photometric change of a crop; each field is a range or a (probability, range).

    Attributes:
        gain: Per-band gain, log-uniform in ``1 / (1 + gain) .. 1 + gain``.
        gamma: Per-band gamma range (``x = 255 * (x / 255) ** gamma``).
        brightness: Brightness factor range, the same for every band.
        contrast: Contrast factor range about the crop's mean.
        haze: Largest share of a grey veil (``x = (1 - a) x + a * veil``, ``a`` up to ``haze``).
        saturation: Saturation factor range (0: grey, 1: unchanged).
        hue: Largest rotation of every colour about the grey axis, in degrees.
        blur: ``(probability, largest Gaussian sigma in pixels)``.
        sharpen: ``(probability, largest unsharp-mask amount)``.
        noise: ``(probability, largest Gaussian noise sigma in image units)``.
        jpeg: ``(probability, lowest JPEG quality)``.
    """

    gain: float = 0.2
    gamma: tuple[float, float] = (0.75, 1.35)
    brightness: tuple[float, float] = (0.75, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    haze: float = 0.2
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: float = 25.0
    blur: tuple[float, float] = (0.2, 1.5)
    sharpen: tuple[float, float] = (0.2, 1.5)
    noise: tuple[float, float] = (0.3, 6.0)
    jpeg: tuple[float, float] = (0.25, 35.0)

    def __post_init__(self) -> None:
        for name in ("gain", "haze", "hue"):
            value = getattr(self, name)
            if not 0 <= value:
                raise ConfigError(f"training.photometric.{name} must be >= 0, got {value!r}")
        if self.haze >= 1:
            raise ConfigError(f"training.photometric.haze must be below 1, got {self.haze!r}")
        for name in ("gamma", "brightness", "contrast", "saturation"):
            low, high = getattr(self, name)
            if not 0 <= low <= high or (name != "saturation" and low == 0):
                raise ConfigError(
                    f"training.photometric.{name} must be a range [low, high] with "
                    f"0 < low <= high, got {[low, high]}"
                )
        for name in ("blur", "sharpen", "noise", "jpeg"):
            p, size = getattr(self, name)
            if not 0 <= p <= 1 or size < 0:
                raise ConfigError(
                    f"training.photometric.{name} must be [probability in 0..1, size >= 0], "
                    f"got {[p, size]}"
                )
        if not 1 <= self.jpeg[1] <= 100:
            raise ConfigError(f"training.photometric.jpeg quality must be 1..100, got {self.jpeg}")

    @classmethod
    def from_config(cls, raw: Any) -> SensorJitter:
        """The ``training.photometric`` mapping (any subset of the fields; the rest default)."""
        if raw is True:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(
                "training.photometric must be a mapping of "
                f"{[f.name for f in dataclasses.fields(cls)]} (or true for the defaults)"
            )
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown training.photometric key(s) {unknown}; known: {list(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(getattr(cls(), key), tuple):
                if not isinstance(value, list | tuple) or len(value) != 2:
                    raise ConfigError(f"training.photometric.{key} must be two numbers")
                values[key] = (float(value[0]), float(value[1]))
            else:
                values[key] = float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the model card."""
        fields = dataclasses.asdict(self).items()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields}

    def apply(self, image: npt.NDArray[Any], rng: np.random.Generator, top: float = 255.0) -> Array:
        """``image`` (C, H, W) as another sensor might have seen it, clipped to ``0..top``."""
        x = np.asarray(image, dtype=np.float32).copy()
        x = self._tone(x, rng, top)
        if x.shape[0] == 3:
            x = self._colour(x, rng)
        x = self._detail(x, rng)
        np.clip(x, 0.0, top, out=x)
        if x.shape[0] == 3 and top == 255.0 and rng.random() < self.jpeg[0]:
            x = jpeg_roundtrip(x, int(rng.uniform(self.jpeg[1], 95)))
        return x

    def _tone(self, x: Array, rng: np.random.Generator, top: float) -> Array:
        """Per-band gain and gamma, brightness, contrast and haze."""
        bands = x.shape[0]
        log_gain = np.log1p(self.gain)
        gains = np.exp(rng.uniform(-log_gain, log_gain, size=(bands, 1, 1))).astype(np.float32)
        low, high = math.log(self.gamma[0]), math.log(self.gamma[1])
        gammas = np.exp(rng.uniform(low, high, size=(bands, 1, 1))).astype(np.float32)
        x = top * np.power(np.clip(x / top, 0.0, 1.0), gammas) * gains
        mean = float(x.mean())
        x = (x - mean) * float(rng.uniform(*self.contrast)) + mean
        x *= float(rng.uniform(*self.brightness))
        if self.haze:
            share = float(rng.uniform(0.0, self.haze))
            veil = top * float(rng.uniform(0.6, 0.95))
            x = (1.0 - share) * x + share * veil
        return x.astype(np.float32, copy=False)

    def _colour(self, x: Array, rng: np.random.Generator) -> Array:
        """Saturation about the per-pixel grey, then a rotation of hue."""
        grey = x.mean(axis=0, keepdims=True)
        x = grey + (x - grey) * float(rng.uniform(*self.saturation))
        if self.hue:
            angle = np.deg2rad(rng.uniform(-self.hue, self.hue))
            x = np.tensordot(hue_rotation(angle), x, axes=1)
        return x.astype(np.float32, copy=False)

    def _detail(self, x: Array, rng: np.random.Generator) -> Array:
        """Blur or sharpening (never both), then sensor noise."""
        from scipy.ndimage import gaussian_filter

        draw = rng.random()
        if draw < self.blur[0] and self.blur[1] > 0:
            sigma = float(rng.uniform(0.3, self.blur[1]))
            x = gaussian_filter(x, sigma=(0, sigma, sigma), mode="reflect")
        elif draw < self.blur[0] + self.sharpen[0] and self.sharpen[1] > 0:
            amount = float(rng.uniform(0.2, self.sharpen[1]))
            soft = gaussian_filter(x, sigma=(0, 1.0, 1.0), mode="reflect")
            x = x + amount * (x - soft)
        if rng.random() < self.noise[0] and self.noise[1] > 0:
            sigma = float(rng.uniform(0.5, self.noise[1]))
            x = x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
        return x.astype(np.float32, copy=False)


def jpeg_roundtrip(x: Array, quality: int) -> Array:
    """An RGB crop ``(3, H, W)`` in 0..255 through JPEG at ``quality``, as float32."""
    from PIL import Image

    hwc = np.ascontiguousarray(np.moveaxis(np.rint(x).astype(np.uint8), 0, -1))
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert("RGB"), dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))
