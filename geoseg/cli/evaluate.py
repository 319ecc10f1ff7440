"""``geoseg evaluate``: score a model on labelled images through the real pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from geoseg.cli.errors import handle_errors
from geoseg.cli.options import parse_bands, tta_option


def parse_merges(merges: Sequence[str]) -> dict[str, list[str]] | None:
    """``("vegetation=tree,low_vegetation", ...)`` as ``{"vegetation": ["tree", ...]}``."""
    if not merges:
        return None
    out = {}
    for item in merges:
        name, sep, members = item.partition("=")
        if not sep or not name or not members:
            raise click.UsageError(f"--merge {item!r} must be NAME=CLASS,CLASS")
        out[name] = [m.strip() for m in members.split(",") if m.strip()]
    return out


@click.command()
@click.argument("pairs", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "-m", "--model", type=click.Path(path_type=str), help="Checkpoint (default: shipped model)."
)
@click.option(
    "--label-config",
    type=click.Path(path_type=Path),
    help="Training config whose classes describe the label encoding (mask colours).",
)
@click.option(
    "--source",
    help="The --label-config data source whose labels these are (configs with several).",
)
@click.option(
    "--merge",
    "merges",
    multiple=True,
    metavar="NAME=A,B",
    help="Also score coarser classes, e.g. vegetation=tree,low_vegetation (default: the card's).",
)
@click.option("--class-field", help="Class column of vector labels.")
@click.option("--tile-size", type=int, help="Tile edge in pixels (default: the model's).")
@click.option("--overlap", type=int, help="Pixels shared by neighbouring tiles.")
@click.option("--batch-size", type=int, help="Tiles per forward pass.")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default auto).")
@click.option("--bands", help="1-based bands to feed the model, e.g. 1,2,3.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write metrics as JSON.")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(path_type=Path),
    is_flag=False,
    flag_value=Path("evaluation"),
    default=None,
    help="Save confusion-matrix and image/label/prediction PNGs in DIR (default ./evaluation).",
)
@tta_option
@click.option("-q", "--quiet", is_flag=True, help="Print the table only.")
@handle_errors
def evaluate(pairs: tuple[str, ...], model: str | None, label_config: Path | None,
             source: str | None, merges: tuple[str, ...], class_field: str | None,
             tile_size: int | None, overlap: int | None, batch_size: int | None,
             device: str | None, bands: str | None, json_path: Path | None,
             plot_dir: Path | None, tta: str | None, quiet: bool) -> None:  # fmt: skip
    """Score a model on IMAGE LABELS [IMAGE LABELS ...] through the real pipeline.

    LABELS is an integer label raster, a colour mask, or vector polygons (with --class-field).
    With --label-config and no pairs, each held-out group of the config (of --source, or of
    every source) is scored on its own, and the worst group is named.
    """
    if len(pairs) % 2:
        raise click.UsageError("give IMAGE LABELS pairs (an even number of paths)")
    from geoseg.training.evaluate import evaluate as run_evaluation

    say = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    options: dict[str, Any] = dict(
        merge=parse_merges(merges), class_field=class_field, tile_size=tile_size,
        overlap=overlap, batch_size=batch_size, device=device, bands=parse_bands(bands), tta=tta,
    )  # fmt: skip
    if not pairs and label_config is not None:
        from geoseg.training.held_out import evaluate_groups

        grouped = evaluate_groups(
            model, label_config, source=source, json_path=json_path, plot_dir=plot_dir,
            log=say, **options,
        )  # fmt: skip
        if not quiet:
            for name, result in grouped.groups.items():
                click.echo(f"== {name}\n{result.table()}\n")
        click.echo(grouped.table())
        for path in grouped.plots:
            say(f"saved {path}")
        return
    result = run_evaluation(
        model, pairs[0::2], pairs[1::2], label_config=label_config, source=source,
        json_path=json_path, plot_dir=plot_dir, log=say, **options,
    )  # fmt: skip
    click.echo(result.table())
    for path in result.plots:
        say(f"saved {path}")
