"""Options and option parsers that several commands share (``--tta``, ``--bands``)."""

from __future__ import annotations

import click

from geoseg.config import TTA_MODES

tta_option = click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    help="Test-time augmentation: average over the tile and its mirror (2x slower), the 4 flips "
    "or all 8 flips/rotations (4x/8x slower). Default: the model card's (the shipped model: "
    "see geoseg info default), else none.",
)


def parse_bands(value: str | None) -> tuple[int, ...] | None:
    """``"1,2,3"`` -> ``(1, 2, 3)``."""
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of band numbers, e.g. 1,2,3"
        ) from None
    if not bands:
        raise click.BadParameter("give at least one band number, e.g. --bands 1,2,3")
    return bands
