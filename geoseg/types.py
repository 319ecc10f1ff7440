"""Small frozen value objects shared by the pipeline: pixel windows, tiles and class tables.

Axis order is fixed once here: a :class:`PixelWindow` is ``(row_off, col_off, height, width)`` and
never guessed again downstream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geoseg.errors import ConfigError

RGB = tuple[int, int, int]


@dataclass(frozen=True, order=True)
class PixelWindow:
    """A rectangle of pixels: rows ``[row_off, row_off + height)``, cols ``[col_off, col_end)``."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of this window in the coordinates it is expressed in."""
        return (slice(self.row_off, self.row_end), slice(self.col_off, self.col_end))

    def relative_to(self, outer: PixelWindow) -> PixelWindow:
        """This window expressed in the pixel coordinates of ``outer``."""
        return PixelWindow(
            self.row_off - outer.row_off, self.col_off - outer.col_off, self.height, self.width
        )

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        """The overlap of two windows, or ``None`` when they do not overlap."""
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def to_rasterio(self) -> Any:
        """The equivalent :class:`rasterio.windows.Window`."""
        from rasterio.windows import Window

        return Window(self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True)
class Tile:
    """One model input: the padded window read from the scene and its place in the tile grid.

    ``read_window`` may extend past the scene (boundless read, filled) only when the scene is
    smaller than one tile or the tile must be padded to the model's output stride; ``valid_window``
    is the part of it inside the scene.
    """

    index: int
    row: int
    col: int
    read_window: PixelWindow
    valid_window: PixelWindow


@dataclass(frozen=True)
class ClassInfo:
    """One class of a land-cover legend."""

    id: int
    name: str
    color: RGB

    @property
    def hex(self) -> str:
        """Colour as ``#rrggbb``."""
        return "#{:02x}{:02x}{:02x}".format(*self.color)


@dataclass(frozen=True)
class ClassTable:
    """The ordered legend of a model: ids ``0..n-1`` with names and colours."""

    classes: tuple[ClassInfo, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"class ids must be unique, got {ids}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"class names must be unique, got {names}")
        if any(not 0 <= i <= 254 for i in ids):
            raise ConfigError(f"class ids must lie in 0..254 (255 is nodata), got {ids}")

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self.classes)

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [c.name for c in self.classes]

    def by_id(self, class_id: int) -> ClassInfo:
        """The class with this id."""
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(class_id)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A GDAL colour table ``{id: (r, g, b, 255)}``."""
        return {c.id: (*c.color, 255) for c in self.classes}

    def to_list(self) -> list[dict[str, Any]]:
        """Plain data for YAML/JSON/checkpoints."""
        return [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]

    @classmethod
    def from_list(cls, items: Sequence[Mapping[str, Any]]) -> ClassTable:
        """Build from ``[{"id": 0, "name": "water", "color": [r, g, b] or "#rrggbb"}, ...]``."""
        out = []
        for i, item in enumerate(items):
            try:
                name = str(item["name"])
                class_id = int(item.get("id", i))
                color = parse_color(item.get("color", default_color(class_id)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"class entry {i} ({dict(item)!r}) needs a 'name', an optional integer 'id' "
                    f"and a colour [r, g, b] or '#rrggbb': {exc}"
                ) from exc
            out.append(ClassInfo(class_id, name, color))
        return cls(tuple(out))

    @classmethod
    def default(cls, n: int) -> ClassTable:
        """``class_0 .. class_{n-1}`` with distinct colours, for models that carry no legend."""
        return cls(tuple(ClassInfo(i, f"class_{i}", default_color(i)) for i in range(n)))


_PALETTE: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def default_color(class_id: int) -> RGB:
    """A distinct colour for a class id (tab10, cycling)."""
    return _PALETTE[class_id % len(_PALETTE)]


def parse_color(value: Any) -> RGB:
    """``"#rrggbb"`` or ``[r, g, b]`` to an RGB tuple of ints in 0..255."""
    if isinstance(value, str):
        text = value.lstrip("#")
        if len(text) != 6:
            raise ValueError(f"colour {value!r} is not #rrggbb")
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    r, g, b = (int(v) for v in value)
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"colour {value!r} has components outside 0..255")
    return (r, g, b)


#: ``--scale`` words besides a window ``LO,HI`` and percentiles ``pN,pM``.
SCALE_MODES = ("auto", "none")


@dataclass(frozen=True)
class ScaleSpec:
    """What ``--scale`` asks for: ``auto``, ``none``, a window ``LO,HI`` or percentiles ``pN,pM``.

    ``mode`` is ``auto``, ``none``, ``window`` (``values``: ``LO,HI`` for every band, or one
    ``LO,HI`` pair per model band) or ``percentiles`` (``values``: ``N, M`` in percent).
    """

    mode: str = "auto"
    values: tuple[float, ...] = ()

    @classmethod
    def parse(cls, value: Any) -> ScaleSpec:
        """``"auto"``, ``"none"``, ``"p2,p98"``, ``"0,3000"``, ``(0, 3000)`` or a ScaleSpec."""
        if isinstance(value, ScaleSpec):
            return value
        text = value if isinstance(value, str) else ",".join(str(v) for v in value)
        text = text.strip().lower().replace(" ", "")
        if text in SCALE_MODES:
            return cls(text)
        parts = text.split(",")
        try:
            if all(p.startswith("p") for p in parts):
                return cls._checked("percentiles", tuple(float(p[1:]) for p in parts))
            return cls._checked("window", tuple(float(p) for p in parts))
        except ValueError:
            pass
        raise ConfigError(
            f"scale must be auto, none, LO,HI (e.g. 0,3000; or one LO,HI pair per band) or "
            f"pN,pM (e.g. p2,p98), got {value!r}"
        )

    @classmethod
    def _checked(cls, mode: str, values: tuple[float, ...]) -> ScaleSpec:
        pairs = list(zip(values[::2], values[1::2], strict=False))
        finite = all(v == v and abs(v) != float("inf") for v in values)
        if len(values) % 2 or not pairs or not finite or any(lo >= hi for lo, hi in pairs):
            raise ValueError(values)
        if mode == "percentiles" and (len(pairs) != 1 or values[0] < 0 or values[1] > 100):
            raise ValueError(values)
        return cls(mode, values)

    def __str__(self) -> str:
        if self.mode in SCALE_MODES:
            return self.mode
        prefix = "p" if self.mode == "percentiles" else ""
        return ",".join(f"{prefix}{v!r}" for v in self.values)

    def windows(self, bands: int) -> tuple[tuple[float, float], ...]:
        """A ``window`` spec's ``(LO, HI)`` for each of ``bands`` bands."""
        pairs = tuple(zip(self.values[::2], self.values[1::2], strict=True))
        if len(pairs) == 1:
            return pairs * bands
        if len(pairs) != bands:
            raise ConfigError(
                f"--scale {self} gives {len(pairs)} LO,HI pairs but the model takes {bands} "
                "band(s): give one pair for all bands or one per band"
            )
        return pairs


@dataclass(frozen=True)
class ModelInput:
    """The values a model was trained on (all in its units, e.g. 0-255).

    Its dtype and value range, and the spans in which a training image's 2nd and 98th
    percentiles lay.
    """

    dtype: str
    value_range: tuple[float, float]
    p2_range: tuple[float, float]
    p98_range: tuple[float, float]


@dataclass(frozen=True)
class Stretch:
    """How scene values become model inputs: per band, a window mapped onto the model's range.

    ``low`` and ``high`` (scene units) map linearly onto the ends of ``out_range`` (the model's
    value range); values outside are clipped to it.

    ``rule`` says which rule chose the windows (``window``, ``percentiles``, ``matched``,
    ``reflectance``), ``note`` how (which sample, which bit depth or product).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    out_range: tuple[float, float]
    rule: str
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or any(
            not lo < hi for lo, hi in zip(self.low, self.high, strict=False)
        ):
            raise ConfigError(f"a stretch needs low < high per band, got {self.low}, {self.high}")

    def gain_bias(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per band ``(gain, bias)`` such that ``scene * gain + bias`` is in the model's units."""
        out_lo, out_hi = self.out_range
        gains = tuple(
            (out_hi - out_lo) / (hi - lo) for lo, hi in zip(self.low, self.high, strict=True)
        )
        return gains, tuple(out_lo - lo * g for lo, g in zip(self.low, gains, strict=True))

    def as_scale(self) -> str:
        """The ``--scale`` value that gives exactly these windows (one LO,HI pair per band)."""
        return ",".join(f"{lo!r},{hi!r}" for lo, hi in zip(self.low, self.high, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``run.json`` and the resume journal."""
        return {"rule": self.rule, "low": list(self.low), "high": list(self.high),
                "out_range": list(self.out_range), "note": self.note}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stretch:
        """Inverse of :meth:`to_dict`."""
        low, high = tuple(float(v) for v in data["low"]), tuple(float(v) for v in data["high"])
        out_lo, out_hi = (float(v) for v in data["out_range"])
        return cls(low, high, (out_lo, out_hi), str(data["rule"]), str(data.get("note", "")))
