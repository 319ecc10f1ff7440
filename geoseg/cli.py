"""The ``geoseg`` command line: argument parsing only, over the Python API.

Heavy modules (torch, rasterio) are imported inside the commands so ``geoseg --help`` is instant.
Every :class:`~geoseg.errors.GeosegError` becomes a one-line message and exit status 1.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from geoseg.errors import GeosegError

F = TypeVar("F", bound=Callable[..., Any])

SAMPLE_SCENE = "naip_rgbn_2016.tif"


def _echo_warning(
    message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None
) -> None:
    click.echo(f"geoseg: warning: {message}", err=True)


def handle_errors(fn: F) -> F:
    """Turn geoseg errors into clean CLI errors (no traceback), and Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _echo_warning
        try:
            return fn(*args, **kwargs)
        except GeosegError as exc:
            click.echo(f"geoseg: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("geoseg: interrupted; no complete output was written", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


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


def sample_scene_path() -> Path:
    """The small real scene shipped inside the package."""
    from importlib import resources

    return Path(str(resources.files("geoseg") / "data" / "sample" / SAMPLE_SCENE))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoseg")
def main() -> None:
    r"""geoseg: land-cover maps from satellite and aerial scenes.

    \b
    geoseg run --sample          segment the shipped sample scene with the default model
    geoseg run scene.tif         write scene_geoseg/ next to the scene
    geoseg info MODEL_OR_SCENE   print a model card or a scene summary
    """


@main.command()
@click.argument("scenes", nargs=-1, type=click.Path(path_type=str))
@click.option("--sample", is_flag=True, help="Segment the small real scene shipped with geoseg.")
@click.option(
    "-m", "--model", type=click.Path(path_type=str), help="Checkpoint (default: shipped model)."
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Output folder (default: SCENE_geoseg/ next to the scene).",
)
@click.option("--tile-size", type=int, help="Tile edge in pixels (default: the model's).")
@click.option("--overlap", type=int, help="Pixels shared by neighbouring tiles (default 64).")
@click.option("--batch-size", type=int, help="Tiles per forward pass (default 8).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default auto).")
@click.option("--bands", help="1-based bands to feed the model, e.g. 1,2,3.")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="YAML settings (see configs/)."
)
@click.option("--probabilities", is_flag=True, default=None, help="Also write probabilities.tif.")
@click.option("--no-vector", is_flag=True, help="Skip the GeoPackage.")
@click.option("--no-preview", is_flag=True, help="Skip preview.png.")
@click.option(
    "--min-area", type=float, help="Merge regions smaller than this (m²) into neighbours."
)
@click.option("--simplify", type=float, help="Coverage simplification tolerance (map units).")
@click.option("--allow-ungeoreferenced", is_flag=True, help="Accept rasters without CRS/transform.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or status lines.")
@handle_errors
def run(
    scenes: tuple[str, ...],
    sample: bool,
    model: str | None,
    out_dir: Path | None,
    tile_size: int | None,
    overlap: int | None,
    batch_size: int | None,
    device: str | None,
    bands: str | None,
    config_path: Path | None,
    probabilities: bool | None,
    no_vector: bool,
    no_preview: bool,
    min_area: float | None,
    simplify: float | None,
    allow_ungeoreferenced: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Segment SCENES (GeoTIFFs or any GDAL raster) into land-cover classes."""
    if sample:
        scenes = (*scenes, str(sample_scene_path()))
        if out_dir is None and len(scenes) == 1:
            out_dir = Path.cwd() / f"{Path(SAMPLE_SCENE).stem}_geoseg"
    if not scenes:
        raise click.UsageError("give a scene to segment (geoseg run scene.tif) or --sample")
    from geoseg.pipeline import segment

    say = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    for scene in scenes:
        target = out_dir
        if out_dir is not None and len(scenes) > 1:
            target = out_dir / f"{Path(scene).stem}_geoseg"
        result = segment(
            scene,
            target,
            model=model,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            bands=parse_bands(bands),
            overwrite=overwrite,
            probabilities=probabilities,
            vectorize=False if no_vector else None,
            preview=False if no_preview else None,
            min_area=min_area,
            simplify=simplify,
            allow_ungeoreferenced=allow_ungeoreferenced,
            config=config_path,
            progress=not quiet,
            log=say,
        )
        if not quiet:
            click.echo(result.summary())
        else:
            click.echo(str(result.out_dir))


@main.command()
@click.argument("target", type=click.Path(path_type=str))
@handle_errors
def info(target: str) -> None:
    """Print a model card (checkpoint, or 'default') or a scene summary (raster)."""
    if target == "default" or target.endswith((".pt", ".pth", ".ckpt")):
        from geoseg.model import load_model

        card = load_model(None if target == "default" else target).card
        click.echo(card.summary())
        return
    from geoseg.read import open_raster, scene_info

    with open_raster(target) as ds:
        click.echo(scene_info(ds).summary())
