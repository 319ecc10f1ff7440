"""Which bands of a scene feed a model: by name, by colour interpretation, or as asked.

A model card names its bands (``red, green, blue``); scenes name theirs in colour
interpretations and descriptions, with aliases (``R``, ``near-infrared``, Sentinel-2's ``B04``).
:func:`select_bands` matches the two, or takes ``--bands``, and says what to pass when it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

from geoseg.errors import BandMismatchError, BandOrderWarning, warn
from geoseg.io.read import SceneInfo

#: Names a band may go by, mapped to the canonical name used in model cards.
_BAND_ALIASES = {
    "r": "red",
    "red": "red",
    "g": "green",
    "green": "green",
    "b": "blue",
    "blue": "blue",
    "n": "nir",
    "nir": "nir",
    "near-infrared": "nir",
    "nearinfrared": "nir",
    "near_infrared": "nir",
    "gray": "gray",
    "grey": "gray",
    "pan": "gray",
    # Sentinel-2 band names (B02 blue, B03 green, B04 red, B08 near-infrared)
    "b02": "blue",
    "b03": "green",
    "b04": "red",
    "b08": "nir",
}


def canonical_band_name(name: str) -> str:
    """Normalise a band name (``"Red"``, ``"R"``, ``"near-infrared"``) for matching."""
    key = name.strip().lower()
    return _BAND_ALIASES.get(key, key)


def select_bands(
    info: SceneInfo,
    wanted: Sequence[str],
    bands: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """1-based band indices of ``info`` to feed a model that expects bands named ``wanted``.

    Explicit ``bands`` win; otherwise bands are matched by colour interpretation or description
    (so a 4-band RGBN scene feeds an RGB model its red, green and blue), and a scene with exactly
    as many bands as the model is used in order.
    """
    n = len(wanted)
    if bands is not None:
        chosen = tuple(int(b) for b in bands)
        bad = [b for b in chosen if not 1 <= b <= info.count]
        if bad:
            raise BandMismatchError(
                f"--bands {','.join(map(str, chosen))}: band(s) {bad} do not exist; "
                f"{info.path} has bands 1..{info.count}"
            )
        if len(chosen) != n:
            raise BandMismatchError(
                f"--bands selects {len(chosen)} band(s) but the model expects {n} "
                f"({', '.join(wanted)})"
            )
        return chosen
    scene_names = [canonical_band_name(b) for b in info.band_names]
    matched = []
    for name in wanted:
        key = canonical_band_name(name)
        if key in scene_names:
            matched.append(scene_names.index(key) + 1)
    if len(matched) == n and len(set(matched)) == n:
        return tuple(matched)
    if info.count == n:
        return tuple(range(1, n + 1))
    generic = all(name in ("gray", "undefined") or name.startswith("band_") for name in scene_names)
    if generic and info.count > n:
        warn(
            f"{info.path} does not name its bands; assuming bands 1..{n} are "
            f"{', '.join(wanted)}. Pass --bands to choose others.",
            BandOrderWarning,
            stacklevel=2,
        )
        return tuple(range(1, n + 1))
    example = ",".join(str(i) for i in range(1, n + 1))
    raise BandMismatchError(
        f"the model expects {n} band(s) ({', '.join(wanted)}) but {info.path} has {info.count} "
        f"({', '.join(info.band_names)}); pick bands with --bands {example} or pass another "
        "--model"
    )


__all__ = ["canonical_band_name", "select_bands"]
