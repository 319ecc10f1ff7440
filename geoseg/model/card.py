"""The model card: what a model expects and produces, stored inside every checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geoseg.config import TTA_MODES
from geoseg.errors import ConfigError, ModelError
from geoseg.types import ClassTable

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
            if kwargs.get("gsd_range") is not None:
                low, high = kwargs["gsd_range"]
                kwargs["gsd_range"] = (float(low), float(high))
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"model card is incomplete or malformed: {exc}") from exc

    def summary(self) -> str:
        """A human-readable model card (what ``geoseg info MODEL`` prints)."""
        lines = [
            f"model:        {self.name}",
            f"architecture: {self.arch} / encoder {self.encoder}"
            + (f" ({_fmt_value(dict(self.arch_kwargs))})" if self.arch_kwargs else ""),
            f"input:        {self.in_channels} bands {', '.join(self.bands)} ({self.dtype})",
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
