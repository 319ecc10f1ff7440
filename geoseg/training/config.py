"""Training configuration: the YAML that ``geoseg train`` reads, parsed and validated.

See ``configs/train_default.yaml`` for a complete example. Every error names the offending key;
relative paths are resolved against the config file's folder. This module reads the file, applies
command-line overrides and checks the legend (``classes``, ``coarse``, the sources' label tables);
:mod:`geoseg.training.config_sections` parses the ``data``, ``model`` and ``training`` sections,
whose dataclasses are imported here for the code that names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import ConfigError
from geoseg.training.config_checks import reject_unknown_keys
from geoseg.training.config_sections import LOSSES as LOSSES
from geoseg.training.config_sections import SCHEDULERS as SCHEDULERS
from geoseg.training.config_sections import DataConfig as DataConfig
from geoseg.training.config_sections import ModelConfig as ModelConfig
from geoseg.training.config_sections import TrainingConfig as TrainingConfig
from geoseg.training.config_sections import (
    parse_model,
    parse_sources,
    parse_training,
    resolve_path,
)
from geoseg.training.label_sets import IGNORE_INDEX, LabelSets, merged_classes, with_sets
from geoseg.types import ClassTable


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
        return IGNORE_INDEX

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
    raw, base = _read(source)
    raw = apply_overrides(raw, overrides)
    known = {"name", "output_dir", "export", "classes", "data", "model", "training", "card"}
    known.add("coarse")
    reject_unknown_keys(raw, known, "")
    for key in ("classes", "data"):
        if key not in raw:
            raise ConfigError(f"training config needs '{key}'")
    entries = raw["classes"]
    classes = _legend(entries)
    sources, band_names = parse_sources(raw["data"], base)
    cfg = TrainConfig(
        name=str(raw.get("name", "geoseg-model")),
        output_dir=resolve_path(base, raw.get("output_dir", "runs/train")),
        export=resolve_path(base, raw["export"]) if raw.get("export") else None,
        classes=classes,
        class_entries=tuple(entries),
        sources=sources,
        model=parse_model(raw.get("model", {}), base),
        training=parse_training(raw.get("training", {}), classes),
        card={str(k): str(v) for k, v in dict(raw.get("card", {}) or {}).items()},
        band_names=band_names,
        coarse=_coarse(raw.get("coarse"), classes),
    )
    cfg.label_sets  # noqa: B018  (validates every label table against the legend)
    if cfg.training.anchor and cfg.model.init is None:
        raise ConfigError("training.anchor needs model.init (the start model to stay close to)")
    return cfg


def _read(source: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], Path]:
    """The raw config mapping and the folder its relative paths start from."""
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
    return raw, base


def _legend(entries: Any) -> ClassTable:
    """The ``classes`` list as a class table whose ids run 0..n-1 in order."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError("'classes' must be a non-empty list of {name, color, ...}")
    try:
        classes = ClassTable.from_list(entries)
    except ConfigError as exc:
        raise ConfigError(f"classes: {exc}") from exc
    if [c.id for c in classes] != list(range(len(classes))):
        raise ConfigError(f"classes: ids must be 0..{len(classes) - 1} in order")
    return classes


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
    reject_unknown_keys(entry, {"mask_color", "value", "classes"}, where)
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
