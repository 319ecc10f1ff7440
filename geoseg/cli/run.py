"""``geoseg run``: segment scenes into land-cover maps, in turn or on a dask cluster.

The command parses its options into a :class:`_RunPlan` (what to segment, where to, with which
settings), segments the scenes through :func:`geoseg.pipeline.segment` or
:mod:`geoseg.distributed`, and reports each result. torch, rasterio and dask are imported only once
a scene is segmented, so that ``geoseg run --help`` stays instant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from geoseg.cli.errors import handle_errors
from geoseg.cli.options import parse_bands, tta_option
from geoseg.cli.scenes import SAMPLE_SCENE, expand_scenes, sample_scene_path
from geoseg.errors import GeosegError

if TYPE_CHECKING:
    from geoseg.distributed import SceneOutcome
    from geoseg.pipeline import SegmentResult


@click.command()
@click.argument("scenes", nargs=-1, type=click.Path(path_type=str))
@click.option("--sample", is_flag=True, help="Segment the small real scene shipped with geoseg.")
@click.option(
    "-m",
    "--model",
    type=click.Path(path_type=str),
    help="Checkpoint or ONNX file (default: shipped model).",
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
@click.option(
    "--resolution",
    metavar="auto|native|METRES",
    help="Pixel size to read the scene at: auto (default: the model's, when the scene's is "
    "outside the range it was trained at), native, or metres. Outputs keep the scene's grid.",
)
@click.option(
    "--scale",
    metavar="auto|none|LO,HI|pN,pM",
    help="How scene values become the model's: auto (default: as they are when the dtype is the "
    "model's, else a reflectance window or a percentile stretch matched to the model), none, a "
    "window LO,HI (or one pair per band) or percentiles pN,pM (e.g. p2,p98). See run.json.",
)
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
@click.option("--simplify", type=float, help="Coverage simplification tolerance (metres).")
@click.option("--allow-ungeoreferenced", is_flag=True, help="Accept rasters without CRS/transform.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run into the same output folder (same scene, model, settings).",
)
@click.option(
    "--mosaic", is_flag=True, help="SCENES are tiles of one mosaic: segment them as one scene."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or status lines.")
@tta_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Run on a local dask cluster of N workers (one scene: split by tile rows).",
)
@click.option(
    "--dask-scheduler",
    metavar="ADDRESS",
    help="Run on an existing dask cluster, e.g. tcp://host:8786.",
)
@handle_errors
def run(
    scenes: tuple[str, ...],
    sample: bool,
    model: str | None,
    out_dir: Path | None,
    tile_size: int | None,
    overlap: int | None,
    resolution: str | None,
    scale: str | None,
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
    resume: bool,
    mosaic: bool,
    quiet: bool,
    tta: str | None,
    workers: int | None,
    dask_scheduler: str | None,
) -> None:
    """Segment SCENES (GeoTIFFs or any GDAL raster) into land-cover classes.

    SCENES may be paths, quoted globs ("tiles/*.tif") or @LIST.txt (one path per line). With
    --workers or --dask-scheduler one scene is split across the workers by tile rows, and
    several scenes run one per worker, with a summary table at the end.
    """
    paths, out_dir = _scene_paths(scenes, sample=sample, mosaic=mosaic, out_dir=out_dir)
    # the keyword arguments of every segment call; None leaves the choice to the config
    options: dict[str, Any] = {
        "tile_size": tile_size,
        "overlap": overlap,
        "batch_size": batch_size,
        "device": device,
        "bands": parse_bands(bands),
        "overwrite": overwrite,
        "probabilities": probabilities,
        "vectorize": False if no_vector else None,
        "preview": False if no_preview else None,
        "min_area": min_area,
        "simplify": simplify,
        "allow_ungeoreferenced": allow_ungeoreferenced,
        "config": config_path,
        "tta": tta,
        "resume": resume,
        "resolution": resolution,
        "scale": scale,
    }
    cluster: dict[str, Any] = {"scheduler": dask_scheduler, "n_workers": workers}
    targets = _output_folders(paths, out_dir)
    _segment(_RunPlan(paths, targets, model, options, cluster, resume=resume, quiet=quiet))


@dataclass(frozen=True)
class _RunPlan:
    """One ``geoseg run``, parsed: what to segment, where to, and the settings of every scene."""

    paths: list[Any]  # scene paths; for --mosaic, one list holding all its files
    targets: list[Path | None]  # the output folder of each entry of paths (None: the default)
    model: str | None
    options: dict[str, Any]  # keyword arguments of every segment call
    cluster: dict[str, Any]  # scheduler and n_workers, for geoseg.distributed
    resume: bool
    quiet: bool

    @property
    def on_cluster(self) -> bool:
        """Whether to run on dask (--workers or --dask-scheduler)."""
        return self.cluster["n_workers"] is not None or self.cluster["scheduler"] is not None


def _scene_paths(
    scenes: tuple[str, ...], *, sample: bool, mosaic: bool, out_dir: Path | None
) -> tuple[list[Any], Path | None]:
    """The scenes to segment (for a mosaic, one list of all its files) and the output folder.

    ``--sample`` adds the shipped scene; alone, it is written to ./naip_rgbn_2016_geoseg/.
    """
    if sample:
        scenes = (*scenes, str(sample_scene_path()))
        if out_dir is None and len(scenes) == 1:
            out_dir = Path.cwd() / f"{Path(SAMPLE_SCENE).stem}_geoseg"
    if not scenes:
        raise click.UsageError("give a scene to segment (geoseg run scene.tif) or --sample")
    expanded = expand_scenes(scenes)
    # a mosaic is one scene made of all the files (pipeline.segment takes the list)
    paths: list[Any] = [expanded] if mosaic else expanded
    return paths, out_dir


def _output_folders(paths: list[Any], out_dir: Path | None) -> list[Path | None]:
    """The output folder of each scene: ``--out`` itself, or for several scenes one inside it."""
    targets = [
        out_dir / f"{Path(s).stem}_geoseg" if out_dir is not None and len(paths) > 1 else out_dir
        for s in paths
    ]
    if out_dir is not None and len(paths) > 1:
        out_dir.mkdir(parents=True, exist_ok=True)  # it holds one folder per scene
    return targets


def _segment(plan: _RunPlan) -> None:
    """Segment every scene: several on a cluster one per worker, else one after the other."""
    say: Callable[[str], None] = (
        (lambda _m: None) if plan.quiet else (lambda m: click.echo(m, err=True))
    )
    if plan.on_cluster and len(plan.paths) > 1:
        _segment_on_workers(plan, say)
    else:
        _segment_in_turn(plan, say)


def _segment_on_workers(plan: _RunPlan, say: Callable[[str], None]) -> None:
    """Segment the scenes one per dask worker, then print the summary table."""
    from geoseg.distributed import segment_many, summary_table

    t_start = time.perf_counter()  # the table's total: from here, imports done
    outcomes = segment_many(
        plan.paths, plan.targets, model=plan.model, log=say, **plan.cluster, **plan.options
    )
    click.echo(summary_table(outcomes, time.perf_counter() - t_start))
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise GeosegError(f"{len(failed)} of {len(outcomes)} scene(s) failed (see the table)")


def _segment_in_turn(plan: _RunPlan, say: Callable[[str], None]) -> None:
    """Segment the scenes one after the other (each split by tile rows on a cluster)."""
    from geoseg.pipeline import segment

    many = len(plan.paths) > 1
    if plan.on_cluster or many:  # dask takes half a second to import: only when it is used
        from geoseg.distributed import SceneOutcome, segment_distributed, summary_table

    t_start = time.perf_counter()  # the table's total: from here, imports done
    outcomes: list[SceneOutcome] = []
    for scene, target in zip(plan.paths, plan.targets, strict=True):
        if plan.resume and _finished_before(scene, target):
            say(f"geoseg: {target or scene} was completed before; skipping it")
            continue
        t0 = time.perf_counter()
        common = {"model": plan.model, "progress": not plan.quiet, "log": say, **plan.options}
        if plan.on_cluster:
            result = segment_distributed(scene, target, **plan.cluster, **common)
        else:
            result = segment(scene, target, **common)
        if many:
            outcomes.append(SceneOutcome(scene, result, None, time.perf_counter() - t0))
        _report(result, quiet=plan.quiet)
    if len(outcomes) > 1 and not plan.quiet:
        click.echo(summary_table(outcomes, time.perf_counter() - t_start))


def _report(result: SegmentResult, *, quiet: bool) -> None:
    """One scene's summary on stdout; with --quiet only its output folder."""
    if not quiet:
        click.echo(result.summary())
    else:
        click.echo(str(result.out_dir))


def _finished_before(scene: Any, target: Path | None) -> bool:
    """Whether the output of ``scene`` exists and no interrupted run is waiting to be resumed."""
    from geoseg.engine.journal import partial_dir
    from geoseg.pipeline import default_out_dir

    out = target if target is not None else default_out_dir(scene)
    return out.is_dir() and not partial_dir(out).exists()
