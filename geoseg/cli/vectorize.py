"""``geoseg vectorize``: a class raster as a QGIS-styled GeoPackage."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.errors import handle_errors


@click.command()
@click.argument("classes_tif", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    required=True,
    help="GeoPackage to write (.gpkg).",
)
@click.option(
    "--classes",
    "classes_yaml",
    type=click.Path(path_type=Path),
    help="YAML class table [{id: 0, name: building, color: '#3c1098'}, ...] "
    "(default: the raster's class_names tag and colour table).",
)
@click.option(
    "--min-area",
    type=float,
    default=0.0,
    show_default=True,
    help="Absorb regions smaller than this (m²) into their largest neighbour first.",
)
@click.option(
    "--simplify",
    type=float,
    default=0.0,
    show_default=True,
    help="Coverage simplification tolerance in metres (shared borders simplified once).",
)
@click.option("--smooth", is_flag=True, help="Chamfer the pixel staircase (coverage stays valid).")
@click.option(
    "--connectivity",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Pixel connectivity of regions.",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=2),
    default=2048,
    show_default=True,
    help="Block side in pixels; memory grows with it, not with the raster.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes polygonizing blocks in parallel.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing GeoPackage.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@handle_errors
def vectorize(classes_tif: Path, out_path: Path, classes_yaml: Path | None, min_area: float,
              simplify: float, smooth: bool, connectivity: str, block_size: int, workers: int,
              overwrite: bool, quiet: bool) -> None:  # fmt: skip
    """Vectorize a class raster (CLASSES_TIF) into a QGIS-styled GeoPackage.

    Writes one polygon layer per class, a combined 'landcover' layer (class_id, class_name,
    area_m2, perimeter_m) and a default QGIS style for every layer.
    """
    from geoseg.vector.vectorize import load_class_table
    from geoseg.vector.vectorize import vectorize as run_vectorize

    table = load_class_table(classes_yaml) if classes_yaml is not None else None
    result = run_vectorize(
        classes_tif, out_path, classes=table, min_area=min_area, simplify=simplify,
        smooth=smooth, connectivity=int(connectivity), block_size=block_size, workers=workers,
        overwrite=overwrite,
    )  # fmt: skip
    if not quiet:
        layers = ", ".join(f"{name} {count}" for name, count in result.layers.items())
        click.echo(f"wrote {result.path} ({result.timings['total']:.1f} s): {layers}")
