"""The model card: what a model expects and produces, stored inside every checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geoseg.config import TTA_MODES
from geoseg.errors import ConfigError, ModelError
from geoseg.types import ClassTable, ModelInput

if TYPE_CHECKING:
    pass

#: smp architecture names, with the aliases users (and torchgeo) write.
ARCHITECTURES: dict[str, str] = {
    "unet": "unet",
    "unetplusplus": "unetplusplus",
    "unet++": "unetplusplus",
    "deeplabv3plus": "deeplabv3plus",
    "deeplabv3+": "deeplabv3plus",
    "deeplabv3": "deeplabv3",
    "fpn": "fpn",
    "pspnet": "pspnet",
    "linknet": "linknet",
    "manet": "manet",
    "pan": "pan",
    "upernet": "upernet",
    "segformer": "segformer",
}


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and produces; stored inside every geoseg checkpoint.

    ``mean``/``std`` are per input band in the scene's own units (e.g. 0..255 for uint8), applied
    as ``(x - mean) / std`` before the forward pass.
    """

    arch: str
    encoder: str
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: ClassTable
    name: str = "geoseg-model"
    dtype: str = "uint8"
    # The input values the model was trained on, in its units (None: the dtype's range, 0-255
    # for uint8, 0-1 for floats), and the spans in which a training image's 2nd and 98th
    # percentiles lay (None: derived from the range, see input_spec). --scale maps scenes there.
    input_range: tuple[float, float] | None = None
    input_p2_range: tuple[float, float] | None = None
    input_p98_range: tuple[float, float] | None = None
    tile_size: int = 512
    # Pixels shared by neighbouring tiles when no --overlap is given (None: geoseg's default).
    tile_overlap: int | None = None
    output_stride: int = 32
    ignore_index: int | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # The test-time augmentation geoseg runs this model with when none is asked for (None: none).
    tta: str | None = None
    # Ground sample distances (metres, finest and coarsest) seen in training, zoom included.
    gsd_range: tuple[float, float] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    # Confidence calibration folded into the weights at export: {temperature, groups: {ECE ...},
    # low_confidence: {threshold, range}} (geoseg.training.calibration); {}: none.
    calibration: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    data_source: str = ""
    licence: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.bands)
        if n == 0:
            raise ModelError("a model card needs at least one input band")
        if len(self.mean) != n or len(self.std) != n:
            raise ModelError(
                f"model card has {n} bands but {len(self.mean)} means and {len(self.std)} stds"
            )
        if any(s <= 0 for s in self.std):
            raise ModelError(f"model card std values must be positive, got {self.std}")
        if len(self.classes) < 1:
            raise ModelError("a model card needs at least one class")
        if self.tile_overlap is not None and not 0 <= self.tile_overlap <= self.tile_size // 2:
            raise ModelError(
                f"model card tile_overlap {self.tile_overlap} must lie in 0..{self.tile_size // 2} "
                "(at most half the tile size)"
            )
        if self.tta is not None and self.tta not in TTA_MODES:
            raise ModelError(
                f"model card tta {self.tta!r} must be one of {', '.join(TTA_MODES)} or null; "
                "export the model again with a valid model.tta"
            )
        spec = self.input_spec
        low, high = spec.value_range
        spans = (spec.value_range, spec.p2_range, spec.p98_range)
        if any(not a < b or a < low or b > high for a, b in spans) or (
            spec.p2_range[1] >= spec.p98_range[0]
        ):
            raise ModelError(
                f"model card input_range {spec.value_range}, input_p2_range {spec.p2_range} and "
                f"input_p98_range {spec.p98_range} must be (low, high) spans inside the input "
                "range, the 2nd percentile's below the 98th's"
            )

    @property
    def input_spec(self) -> ModelInput:
        """The values the model takes, with the card's defaults filled in.

        No ``input_range``: the dtype's (0-255 for uint8, as the shipped default model was
        trained; 0-1 for floats). No percentile spans: a training image's darkest band 2nd
        percentile is taken to lie in the lower 45 % of the range and its brightest band 98th in
        the upper 45 % (for 0-255: 0-114.75 and 140.25-255; the 43 Ohio validation tiles: 31-110 and
        160-241).
        """
        import numpy as np

        if self.input_range is not None:
            low, high = self.input_range
        elif np.dtype(self.dtype).kind in "ui":
            info = np.iinfo(np.dtype(self.dtype))
            low, high = float(max(info.min, 0)), float(info.max)
        else:
            low, high = 0.0, 1.0
        span = high - low
        return ModelInput(
            dtype=self.dtype,
            value_range=(low, high),
            p2_range=self.input_p2_range or (low, low + 0.45 * span),
            p98_range=self.input_p98_range or (low + 0.55 * span, high),
        )

    @property
    def in_channels(self) -> int:
        """Number of input bands."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str/int/float/list/dict only) for checkpoints and JSON."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ClassTable):
                value = value.to_list()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; unknown keys are refused so typos surface."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"model card has unknown fields {unknown}; known: {sorted(known)}")
        try:
            kwargs = dict(data)
            kwargs["classes"] = ClassTable.from_list(kwargs["classes"])
            for key in ("bands", "mean", "std"):
                kwargs[key] = tuple(kwargs[key])
            kwargs["mean"] = tuple(float(v) for v in kwargs["mean"])
            kwargs["std"] = tuple(float(v) for v in kwargs["std"])
            for key in ("gsd_range", "input_range", "input_p2_range", "input_p98_range"):
                if kwargs.get(key) is not None:
                    low, high = kwargs[key]
                    kwargs[key] = (float(low), float(high))
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"model card is incomplete or malformed: {exc}") from exc

    def summary(self) -> str:
        """A human-readable model card (what ``geoseg info MODEL`` prints)."""
        lines = [
            f"model:        {self.name}",
            f"architecture: {self.arch} / encoder {self.encoder}"
            + (f" ({_fmt_value(dict(self.arch_kwargs))})" if self.arch_kwargs else ""),
            f"input:        {self.in_channels} bands {', '.join(self.bands)} ({self.dtype}, "
            f"values {_span(self.input_spec.value_range)})",
            f"other dtypes: scaled (--scale auto) to a training image's 2nd percentile in "
            f"{_span(self.input_spec.p2_range)}, 98th in {_span(self.input_spec.p98_range)}",
            f"normalise:    mean {_fmt(self.mean)}  std {_fmt(self.std)}",
            f"tile size:    {self.tile_size} px (output stride {self.output_stride})"
            + (f", overlap {self.tile_overlap} px" if self.tile_overlap is not None else ""),
            *(
                [f"tta:          {self.tta} (run by default; --tta none turns it off)"]
                if self.tta and self.tta != "none"
                else []
            ),
            "pixel size:   "
            + (
                f"{self.gsd_range[0]:g}-{self.gsd_range[1]:g} m (ground sample distances "
                "seen in training)"
                if self.gsd_range
                else "not recorded"
            ),
            "classes:",
        ]
        lines += [f"  {c.id:>3}  {c.name:<16} {c.hex}" for c in self.classes]
        if self.calibration:
            low = self.calibration.get("low_confidence") or {}
            lines.append(
                f"calibration:  temperature {self.calibration.get('temperature')} (folded into "
                "the weights)"
                + (
                    f"; held-out share under {low['threshold']:g} confidence "
                    f"{low['range'][0]:.3f}-{low['range'][1]:.3f}"
                    if low.get("range")
                    else ""
                )
            )
        if self.metrics:
            lines.append("metrics:")
            lines += _metric_lines(self.metrics, "  ")
        if self.training:
            lines.append("training:")
            lines += [f"  {k}: {_fmt_value(v)}" for k, v in self.training.items()]
        if self.data_source:
            lines.append(f"data:         {self.data_source}")
        if self.licence:
            lines.append(f"licence:      {self.licence}")
        if self.description:
            lines.append(f"about:        {self.description}")
        return "\n".join(lines)


def _metric_lines(metrics: Mapping[str, Any], indent: str) -> list[str]:
    """Metrics one per line; a ``regions`` mapping gets a block per region."""
    lines = []
    for key, value in metrics.items():
        if key == "regions" and isinstance(value, Mapping):
            for region, scores in value.items():
                lines.append(f"{indent}region {region}:")
                lines += _metric_lines(scores, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_fmt_value(value)}")
    return lines


def _span(values: tuple[float, float]) -> str:
    return f"{values[0]:.4g}-{values[1]:.4g}"


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple) and value and isinstance(value[0], float):
        return _fmt(value)
    return str(value)
