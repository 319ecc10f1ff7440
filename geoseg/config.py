"""Validated run settings, loadable from YAML files such as ``configs/default.yaml``.

Every section is a frozen dataclass. Loading refuses unknown keys and wrong types and names the
offending key (``inference.batch_size: expected an integer, got 'eight'``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from geoseg.errors import ConfigError
from geoseg.types import ScaleSpec

T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TTA_MODES = ("none", "mirror", "flips", "d4")
#: ``tiling.resolution`` modes besides a pixel size in metres.
RESOLUTION_MODES = ("auto", "native")


def parse_resolution(value: Any) -> str | float:
    """``"auto"``, ``"native"`` or a positive pixel size in metres (numbers given as text too)."""
    if isinstance(value, str) and value.strip().lower() in RESOLUTION_MODES:
        return value.strip().lower()
    try:
        metres = float(value)
    except (TypeError, ValueError):
        metres = math.nan
    if isinstance(value, bool) or not math.isfinite(metres) or metres <= 0:
        raise ConfigError(
            f"resolution must be auto, native or a pixel size in metres (e.g. 0.6), got {value!r}"
        )
    return metres


@dataclass(frozen=True)
class TilingConfig:
    """How the scene is cut into model inputs (pixels)."""

    tile_size: int | None = None  # None: the model card's training tile size
    overlap: int | None = None  # None: min(64, tile_size // 4)
    # The pixel size tiles are read at: auto (the model's when the scene's is outside the range it
    # was trained at), native (the scene's) or metres. Outputs stay on the scene's grid.
    resolution: str | float = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution", parse_resolution(self.resolution))
        if self.tile_size is not None and self.tile_size < 1:
            raise ConfigError(f"tiling.tile_size must be a positive integer, got {self.tile_size}")
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(f"tiling.overlap must be >= 0 pixels, got {self.overlap}")
        if (
            self.tile_size is not None
            and self.overlap is not None
            and 2 * self.overlap > self.tile_size
        ):
            raise ConfigError(
                f"tiling.overlap ({self.overlap}) must be at most half the tile size "
                f"({self.tile_size}); lower --overlap or raise --tile-size"
            )

    def resolve(self, model_tile_size: int, model_overlap: int | None = None) -> tuple[int, int]:
        """Tile size and overlap in pixels, filling defaults from the model's tile size.

        ``model_overlap`` (a model card's ``tile_overlap``) replaces geoseg's default overlap.
        """
        tile = self.tile_size or model_tile_size
        default = min(64, tile // 4) if model_overlap is None else min(model_overlap, tile // 2)
        overlap = self.overlap if self.overlap is not None else default
        return tile, overlap


@dataclass(frozen=True)
class InferenceConfig:
    """Batching, device and numeric precision."""

    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"  # auto: fp16 autocast on CUDA, fp32 on CPU
    read_threads: int = 2
    prefetch_batches: int = 2
    # Test-time augmentation: none | mirror (2 passes) | flips (4) | d4 (8: flips and rotations);
    # None: the model card's own (``ModelCard.tta``), else none.
    tta: str | None = None

    def __post_init__(self) -> None:
        if self.tta is not None and self.tta not in TTA_MODES:
            raise ConfigError(
                f"inference.tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"inference.batch_size must be >= 1, got {self.batch_size}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(
                f"inference.device must be one of {', '.join(DEVICES)} or cuda:N, got "
                f"{self.device!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"inference.precision must be one of {', '.join(PRECISIONS)}, got "
                f"{self.precision!r}"
            )
        if self.read_threads < 1 or self.prefetch_batches < 1:
            raise ConfigError("inference.read_threads and inference.prefetch_batches must be >= 1")


def resolve_tta(tta: str | None, model_tta: str | None) -> str:
    """The test-time augmentation to run: the one asked for, else the model card's, else none."""
    if tta is not None:
        return tta
    return model_tta or "none"


@dataclass(frozen=True)
class OutputConfig:
    """What is written into the output folder."""

    probabilities: bool = False
    preview: bool = True
    vectorize: bool = True
    min_area: float = 0.0
    simplify: float = 0.0
    block_size: int = 512

    def __post_init__(self) -> None:
        if self.min_area < 0 or self.simplify < 0:
            raise ConfigError("output.min_area and output.simplify must be >= 0")
        if self.block_size < 16 or self.block_size % 16:
            raise ConfigError(f"output.block_size must be a multiple of 16, got {self.block_size}")


@dataclass(frozen=True)
class RunConfig:
    """All settings of one ``geoseg run``."""

    model: str | None = None
    bands: tuple[int, ...] | None = None
    # How scene values become the model's: auto | none | LO,HI (or a pair per band) | pN,pM;
    # see geoseg.io.stretch. Kept in its canonical text (ScaleSpec.parse / str).
    scale: str = "auto"
    tiling: TilingConfig = field(default_factory=TilingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", str(ScaleSpec.parse(self.scale)))

    @property
    def scale_spec(self) -> ScaleSpec:
        """``scale`` parsed."""
        return ScaleSpec.parse(self.scale)

    def replace(self, **sections: Mapping[str, Any]) -> RunConfig:
        """A copy with some fields of some sections changed; ``None`` values are ignored.

        ``cfg.replace(tiling={"overlap": 32}, top={"model": "m.pt"})``.
        """
        top = {k: v for k, v in dict(sections.pop("top", {})).items() if v is not None}
        changes: dict[str, Any] = dict(top)
        for name, values in sections.items():
            current = getattr(self, name)
            updates = {k: v for k, v in values.items() if v is not None}
            changes[name] = _build(type(current), {**_as_dict(current), **updates}, name)
        if "bands" in changes and changes["bands"] is not None:
            changes["bands"] = tuple(changes["bands"])
        return dataclasses.replace(self, **changes)


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def load_config(path: str | Path | None = None) -> RunConfig:
    """Read a YAML run configuration; ``None`` gives the defaults."""
    if path is None:
        return RunConfig()
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        # PyYAML's own message spans several lines (it quotes the source); keep it to one
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"config file {path} is not valid YAML{where}: {problem}; fix the syntax there "
            "(see configs/default.yaml)"
        ) from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections at the top level")
    return config_from_mapping(data, source=str(path))


def config_from_mapping(data: Mapping[str, Any], *, source: str = "config") -> RunConfig:
    """Validate plain data (as parsed from YAML) into a :class:`RunConfig`."""
    try:
        return _build(RunConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"in section '{prefix}'" if prefix else "at the top level"
        raise ConfigError(f"unknown key(s) {unknown} {where}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for hint_i in inner[:-1]:
            try:
                return _coerce(hint_i, value, key)
            except ConfigError:
                continue
        return _coerce(inner[-1], value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, key) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {hint}")  # pragma: no cover
