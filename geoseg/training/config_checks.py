"""Checks that training config sections share: unknown keys, and two augmentation settings.

:func:`reject_unknown_keys` names every key a section does not know; ``training.target_gsd``
(the pixel sizes crops are shown at) and ``training.hue_shift`` (class hue changes, class names
checked against the legend) are parsed for :mod:`geoseg.training.config_sections`. Every error
names the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geoseg.errors import ConfigError
from geoseg.types import ClassTable


def reject_unknown_keys(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    """Raise naming every key of ``raw`` (at ``where``) that is not in ``known``."""
    unknown = sorted(set(raw) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(known)}"
        )


def target_gsd_setting(raw: Any) -> dict[str, Any]:
    """``training.target_gsd``: ``{range: [finest, coarsest], probability: p}`` checked."""
    if not isinstance(raw, Mapping) or "range" not in raw:
        raise ConfigError(
            "training.target_gsd must be a mapping {range: [finest, coarsest] metres, "
            f"probability: 0.5}}, got {raw!r}"
        )
    reject_unknown_keys(raw, {"range", "probability"}, "training.target_gsd")
    rng, p = raw["range"], raw.get("probability", 1.0)
    if (
        not isinstance(rng, list | tuple)
        or len(rng) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in rng)
        or not 0 < rng[0] <= rng[1]
    ):
        raise ConfigError(f"training.target_gsd.range must be [finest, coarsest] > 0, got {rng!r}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
        raise ConfigError(f"training.target_gsd.probability must be in (0, 1], got {p!r}")
    return {"range": (float(rng[0]), float(rng[1])), "probability": float(p)}


def hue_shift_setting(raw: Any, classes: ClassTable) -> dict[str, Any]:
    """``training.hue_shift`` checked: class names in the legend, degrees and probability."""
    if not isinstance(raw, Mapping) or not (
        isinstance(raw.get("classes"), list) or raw.get("classes") == "all"
    ):
        raise ConfigError(
            "training.hue_shift must be a mapping {classes: [names] | all, degrees: 180, "
            f"probability: 0.5}}, got {raw!r}"
        )
    reject_unknown_keys(
        raw,
        {"classes", "degrees", "probability", "brightness", "independent"},
        "training.hue_shift",
    )
    names = classes.names
    listed = [] if raw["classes"] == "all" else raw["classes"]
    unknown = [c for c in listed if c not in names]
    if unknown or (not listed and raw["classes"] != "all"):
        raise ConfigError(
            f"training.hue_shift.classes must name classes of the legend {list(names)} "
            f"(or be 'all'), got {raw['classes']!r}"
        )
    independent = raw.get("independent", raw["classes"] == "all")
    if not isinstance(independent, bool) or (raw["classes"] == "all" and not independent):
        raise ConfigError(
            "training.hue_shift.independent must be true or false (true with classes: all)"
        )
    out: dict[str, Any] = {"classes": listed, "independent": independent}
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


__all__ = ["hue_shift_setting", "reject_unknown_keys", "target_gsd_setting"]
