"""``geoseg export``: a model as ONNX, for QGIS Deepness and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.errors import handle_errors


@click.command("export")
@click.argument("model", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help="ONNX file to write (*.onnx).",
)
@click.option(
    "--opset",
    type=click.IntRange(13, 20),
    default=17,
    show_default=True,
    help="ONNX operator set; 17 runs on onnxruntime 1.12 and later (QGIS Deepness).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@handle_errors
def export(model: str, out_path: Path, opset: int, overwrite: bool) -> None:
    """Export MODEL (a checkpoint, or 'default') as ONNX for QGIS Deepness and onnxruntime.

    The graph takes normalised tiles (N, C, H, W) float32 and returns class probabilities
    (N, K, H, W); batch, height and width are dynamic. Its metadata holds the keys Deepness reads
    (model_type, class_names, resolution in cm/px, tile_size, tiles_overlap in percent,
    standardization_mean/std for pixels divided by 255) and the whole geoseg model card
    (geoseg_card), so the file runs in geoseg too.

    Example: geoseg export default -o landcover.onnx, then load landcover.onnx in Deepness, or
    run geoseg run scene.tif --model landcover.onnx.
    """
    from geoseg.model.onnx_export import export_onnx

    result = export_onnx(
        None if model == "default" else model, out_path, opset=opset, overwrite=overwrite
    )
    click.echo(result.summary())
