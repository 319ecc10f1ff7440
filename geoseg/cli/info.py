"""``geoseg info``: a model card or a scene summary."""

from __future__ import annotations

import click

from geoseg.cli.errors import handle_errors


@click.command()
@click.argument("target", type=click.Path(path_type=str))
@handle_errors
def info(target: str) -> None:
    """Print a model card (checkpoint, ONNX file, or 'default') or a scene summary (raster)."""
    if target == "default" or target.endswith((".pt", ".pth", ".ckpt", ".onnx")):
        from geoseg.model import read_card

        click.echo(read_card(None if target == "default" else target).summary())
        return
    from geoseg.io.read import open_raster, scene_info

    with open_raster(target) as ds:
        click.echo(scene_info(ds).summary())
