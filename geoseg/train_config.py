"""Training configuration: the YAML that ``geoseg train`` reads, parsed and validated.

See ``configs/train_default.yaml`` for a complete example. Every error names the offending key;
relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg import train_data
from geoseg.errors import ConfigError
from geoseg.types import ClassTable

LOSSES = ("ce", "focal", "dice", "jaccard", "ce+dice")
SCHEDULERS = ("onecycle", "cosine", "plateau")


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled data is and how it is split (see :mod:`geoseg.train_data`)."""

    source: str
    root: Path | None = None
    images: str = ""
    masks: str = ""
    scenes: tuple[Mapping[str, Any], ...] = ()
    val_groups: tuple[str, ...] = ()
    ignore: tuple[Any, ...] = ()
    bands: tuple[int, ...] | None = None
    band_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train."""

    arch: str = "unet"
    encoder: str = "resnet18"
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tile_size: int = 512
    # Weights to start from (fine-tuning): a checkpoint path, or "default" for the shipped model.
    init: str | Path | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings. Steps, not epochs: an "epoch" is ``steps_per_epoch`` random crops."""

    crop: int = 256
    sampling: str = "sqrt"
    scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    batch_size: int = 8
    max_steps: int = 2000
    steps_per_epoch: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "onecycle"
    loss: str = "ce"
    class_weights: str | tuple[float, ...] | None = "auto"
    prior_correction: bool = True
    early_stopping_patience: int = 10
    checkpoint_every_n_steps: int = 50
    num_workers: int = 0
    threads: int | None = None
    accelerator: str = "auto"
    precision: str = "32-true"
    seed: int = 0
    log_every_n_steps: int = 10


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run, validated."""

    name: str
    output_dir: Path
    export: Path | None
    classes: ClassTable
    class_entries: tuple[Mapping[str, Any], ...]
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    card: Mapping[str, str]

    @property
    def ignore_index(self) -> int:
        """The label value that is left out of loss and metrics."""
        return train_data.IGNORE_INDEX


def load_config(source: str | Path | Mapping[str, Any]) -> TrainConfig:
    """Parse and validate a training config (a YAML path or an already-loaded mapping).

    Raises:
        ConfigError: naming the key that is missing or wrong.
    """
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        base = Path.cwd()
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"training config {path} is not valid YAML: {exc}") from exc
        base = path.resolve().parent
    if not isinstance(raw, Mapping):
        raise ConfigError("a training config must be a mapping with 'classes', 'data', 'model'")
    known = {"name", "output_dir", "export", "classes", "data", "model", "training", "card"}
    _no_unknown(raw, known, "")
    for key in ("classes", "data"):
        if key not in raw:
            raise ConfigError(f"training config needs '{key}'")
    entries = raw["classes"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError("'classes' must be a non-empty list of {name, color, ...}")
    try:
        classes = ClassTable.from_list(entries)
    except ConfigError as exc:
        raise ConfigError(f"classes: {exc}") from exc
    if [c.id for c in classes] != list(range(len(classes))):
        raise ConfigError(f"classes: ids must be 0..{len(classes) - 1} in order")
    return TrainConfig(
        name=str(raw.get("name", "geoseg-model")),
        output_dir=_path(base, raw.get("output_dir", "runs/train")),
        export=_path(base, raw["export"]) if raw.get("export") else None,
        classes=classes,
        class_entries=tuple(entries),
        data=_data_config(raw["data"], base),
        model=_model_config(raw.get("model", {}), base),
        training=_training_config(raw.get("training", {})),
        card={str(k): str(v) for k, v in dict(raw.get("card", {}) or {}).items()},
    )


def _path(base: Path, value: Any) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(known)}"
        )


def _section(cls: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where}' must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    _no_unknown(raw, names, where)
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"'{where}': {exc}") from exc


def _model_config(raw: Any, base: Path) -> ModelConfig:
    cfg: ModelConfig = _section(ModelConfig, raw, "model")
    init = cfg.init
    if init is None or init == "default":
        return cfg
    if not isinstance(init, str) or not init:
        raise ConfigError(f"model.init must be a checkpoint path or 'default', got {init!r}")
    path = _path(base, init)
    if not path.is_file():
        raise ConfigError(
            f"model.init: checkpoint {path} does not exist; give a geoseg or Lightning "
            "checkpoint, or 'default' to fine-tune the shipped model"
        )
    return dataclasses.replace(cfg, init=path)


def _training_config(raw: Any) -> TrainingConfig:
    cfg: TrainingConfig = _section(TrainingConfig, raw, "training")
    ints = ("crop", "batch_size", "max_steps", "steps_per_epoch", "checkpoint_every_n_steps")
    for key in ints:
        value = getattr(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"training.{key} must be a positive integer, got {value!r}")
    if cfg.sampling not in train_data.SAMPLING:
        raise ConfigError(
            f"training.sampling must be one of {train_data.SAMPLING}, got {cfg.sampling!r}"
        )
    if cfg.scale is not None:
        sc = cfg.scale
        if (
            not isinstance(sc, list | tuple)
            or len(sc) != 2
            or not all(isinstance(v, int | float) and v > 0 for v in sc)
            or sc[0] > sc[1]
        ):
            raise ConfigError(
                f"training.scale must be a zoom range [low, high] with 0 < low <= high, got {sc!r}"
            )
        cfg = dataclasses.replace(cfg, scale=(float(sc[0]), float(sc[1])))
    cj = cfg.color_jitter
    if isinstance(cj, bool) or not isinstance(cj, int | float) or not 0 <= cj < 1:
        raise ConfigError(
            f"training.color_jitter must be a strength in [0, 1) (e.g. 0.2), got {cj!r}"
        )
    if cfg.loss not in LOSSES:
        raise ConfigError(f"training.loss must be one of {LOSSES}, got {cfg.loss!r}")
    if cfg.scheduler not in SCHEDULERS:
        raise ConfigError(f"training.scheduler must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
    for key in ("lr", "weight_decay"):
        value = getattr(cfg, key)
        if not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"training.{key} must be a non-negative number, got {value!r}")
    cw = cfg.class_weights
    if isinstance(cw, list):
        cfg = dataclasses.replace(cfg, class_weights=tuple(float(v) for v in cw))
    elif cw not in (None, "auto"):
        raise ConfigError(f"training.class_weights must be 'auto', null or a list, got {cw!r}")
    if not isinstance(cfg.prior_correction, bool):
        raise ConfigError(
            f"training.prior_correction must be true or false, got {cfg.prior_correction!r}"
        )
    return cfg


def _data_config(raw: Any, base: Path) -> DataConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("'data' must be a mapping")
    known = {f.name for f in dataclasses.fields(DataConfig)}
    _no_unknown(raw, known, "data")
    source = raw.get("source")
    if source not in ("folders", "rasters"):
        raise ConfigError(f"data.source must be 'folders' or 'rasters', got {source!r}")
    val_groups = raw.get("val_groups") or []
    if not isinstance(val_groups, list) or not val_groups:
        raise ConfigError("data.val_groups must list the tiles/scenes held out for validation")
    bands = raw.get("bands")
    band_names = raw.get("band_names")
    common = {
        "source": source,
        "val_groups": tuple(str(g) for g in val_groups),
        "ignore": tuple(tuple(v) if isinstance(v, list) else v for v in raw.get("ignore") or []),
        "bands": tuple(int(b) for b in bands) if bands else None,
        "band_names": tuple(str(b) for b in band_names) if band_names else None,
    }
    if source == "folders":
        for key in ("root", "images", "masks"):
            if not raw.get(key):
                raise ConfigError(f"data.{key} is required when data.source is 'folders'")
        return DataConfig(
            root=_path(base, raw["root"]),
            images=str(raw["images"]),
            masks=str(raw["masks"]),
            **common,
        )
    scenes = raw.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise ConfigError("data.scenes must list {image, labels[, class_field]} entries")
    resolved = []
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Mapping) or "image" not in scene or "labels" not in scene:
            raise ConfigError(f"data.scenes[{i}] needs 'image' and 'labels'")
        _no_unknown(scene, {"image", "labels", "class_field"}, f"data.scenes[{i}]")
        resolved.append(
            {
                "image": _path(base, scene["image"]),
                "labels": _path(base, scene["labels"]),
                "class_field": scene.get("class_field"),
            }
        )
    return DataConfig(scenes=tuple(resolved), **common)
