"""The ``geoseg`` command line: argument parsing only, over the Python API.

Heavy modules (torch, rasterio) are imported inside the commands so ``geoseg --help`` is instant.
Every :class:`~geoseg.errors.GeosegError` becomes a one-line message and exit status 1.
"""

from __future__ import annotations

import functools
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
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
            click.echo(f"geoseg: {_interrupted_message()}", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _interrupted_message() -> str:
    """What to say on Ctrl-C: for ``geoseg run``, the command that resumes the run."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command.name != "run":
        return "interrupted; no complete output was written"
    argv = sys.argv[1:]
    if "run" not in argv:  # called from Python (e.g. click's test runner), not from a shell
        return "interrupted; resume with the same geoseg run command plus --resume"
    args = [a for a in argv[argv.index("run") :] if a != "--resume"]
    return f"interrupted; resume with: geoseg {shlex.join([*args, '--resume'])}"


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


tta_option = click.option(
    "--tta",
    type=click.Choice(["none", "flips", "d4"]),
    help="Test-time augmentation: average over 4 flips or all 8 flips/rotations (4x/8x slower).",
)


@main.command()
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
    if sample:
        scenes = (*scenes, str(sample_scene_path()))
        if out_dir is None and len(scenes) == 1:
            out_dir = Path.cwd() / f"{Path(SAMPLE_SCENE).stem}_geoseg"
    if not scenes:
        raise click.UsageError("give a scene to segment (geoseg run scene.tif) or --sample")
    expanded = expand_scenes(scenes)
    # a mosaic is one scene made of all the files (pipeline.segment takes the list)
    paths: list[Any] = [expanded] if mosaic else expanded
    import time

    from geoseg.pipeline import segment

    cluster: dict[str, Any] = {"scheduler": dask_scheduler, "n_workers": workers}
    on_cluster = workers is not None or dask_scheduler is not None
    many = len(paths) > 1
    if on_cluster or many:  # dask takes half a second to import: only when it is used
        from geoseg.distributed import (
            SceneOutcome,
            segment_distributed,
            segment_many,
            summary_table,
        )

    say = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
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
    }
    targets = [
        out_dir / f"{Path(s).stem}_geoseg" if out_dir is not None and len(paths) > 1 else out_dir
        for s in paths
    ]
    if out_dir is not None and len(paths) > 1:
        out_dir.mkdir(parents=True, exist_ok=True)  # it holds one folder per scene
    t_start = time.perf_counter()
    if on_cluster and len(paths) > 1:
        outcomes = segment_many(paths, targets, model=model, log=say, **cluster, **options)
        click.echo(summary_table(outcomes, time.perf_counter() - t_start))
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise GeosegError(f"{len(failed)} of {len(outcomes)} scene(s) failed (see the table)")
        return
    outcomes = []
    for scene, target in zip(paths, targets, strict=True):
        if resume and _finished_before(scene, target):
            say(f"geoseg: {target or scene} was completed before; skipping it")
            continue
        t0 = time.perf_counter()
        common = {"model": model, "progress": not quiet, "log": say, **options}
        if on_cluster:
            result = segment_distributed(scene, target, **cluster, **common)
        else:
            result = segment(scene, target, **common)
        if many:
            outcomes.append(SceneOutcome(scene, result, None, time.perf_counter() - t0))
        if not quiet:
            click.echo(result.summary())
        else:
            click.echo(str(result.out_dir))
    if len(outcomes) > 1 and not quiet:
        click.echo(summary_table(outcomes, time.perf_counter() - t_start))


def _finished_before(scene: Any, target: Path | None) -> bool:
    """Whether the output of ``scene`` exists and no interrupted run is waiting to be resumed."""
    from geoseg.engine.journal import partial_dir
    from geoseg.pipeline import default_out_dir

    out = target if target is not None else default_out_dir(scene)
    return out.is_dir() and not partial_dir(out).exists()


def expand_scenes(args: Sequence[str]) -> list[str]:
    """Scene arguments to paths: globs are expanded, ``@list.txt`` is read (one path a line).

    Lines of a list that are blank or start with ``#`` are skipped; relative paths in a list are
    relative to the list's folder. Arguments that are neither (URLs, GDAL paths) pass unchanged.
    """
    import glob

    scenes: list[str] = []
    for arg in args:
        if arg.startswith("@"):
            listing = Path(arg[1:])
            if not listing.is_file():
                raise click.BadParameter(
                    f"scene list {listing} does not exist", param_hint="SCENES"
                )
            for line in listing.read_text(encoding="utf-8").splitlines():
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    is_local = "://" not in entry and not entry.startswith("/vsi")
                    path = Path(entry)
                    relative = is_local and not path.is_absolute()
                    scenes.append(str(listing.parent / path) if relative else entry)
        elif glob.has_magic(arg) and "://" not in arg and not Path(arg).exists():
            matches = sorted(glob.glob(arg))
            if not matches:
                raise click.BadParameter(f"no file matches {arg!r}", param_hint="SCENES")
            scenes.extend(matches)
        else:
            scenes.append(arg)
    if not scenes:
        raise click.BadParameter("the scene list is empty", param_hint="SCENES")
    return scenes


@main.command()
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


@main.command("export")
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
    from geoseg.model.onnx import export_onnx

    result = export_onnx(
        None if model == "default" else model, out_path, opset=opset, overwrite=overwrite
    )
    click.echo(result.summary())


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--max-steps", type=int, help="Override training.max_steps.")
@click.option(
    "--stop-after",
    type=int,
    help="Stop at this step, keeping the full LR schedule (resume later to continue).",
)
@click.option(
    "--stop-after-minutes",
    type=float,
    help="Stop after this many minutes, keeping the LR schedule (equal-time comparisons).",
)
@click.option("--no-resume", is_flag=True, help="Start afresh even if OUTPUT_DIR has last.ckpt.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(path_type=Path),
    help="Where to write the geoseg checkpoint (default: the config's 'export').",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set model.encoder=tu-tf_efficientnet_lite2 "
    "--set output_dir=../runs/lite2 (a separate run: resuming refuses another network).",
)
@handle_errors
def train(config: Path, max_steps: int | None, stop_after: int | None,
          stop_after_minutes: float | None, no_resume: bool, export_path: Path | None,
          overrides: tuple[str, ...]) -> None:  # fmt: skip
    """Train a segmentation model as CONFIG.yaml describes (see configs/train_default.yaml)."""
    from geoseg.training.train import train as run_training

    result = run_training(config, resume=not no_resume, max_steps=max_steps,
                          stop_after=stop_after, stop_after_minutes=stop_after_minutes,
                          export=export_path, overrides=overrides)  # fmt: skip
    click.echo(f"best checkpoint: {result.best_checkpoint}")
    if result.exported is not None:
        click.echo(f"exported model:  {result.exported}")
    if result.metrics:
        click.echo(f"held-out mIoU {result.metrics['miou']:.4f}, "
                   f"pixel accuracy {result.metrics['pixel_accuracy']:.4f}")  # fmt: skip


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


@main.command()
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
    With --label-config and no pairs, the config's held-out images (of --source) are scored.
    """
    if len(pairs) % 2:
        raise click.UsageError("give IMAGE LABELS pairs (an even number of paths)")
    from geoseg.training.evaluate import evaluate as run_evaluation
    from geoseg.training.evaluate import held_out_pairs

    if not pairs and label_config is not None:
        pairs = tuple(str(p) for pair in held_out_pairs(label_config, source) for p in pair)
        if not pairs:
            raise click.UsageError(
                f"the held-out groups of {label_config} match no image; give IMAGE LABELS pairs"
            )
    say = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    result = run_evaluation(
        model, pairs[0::2], pairs[1::2], label_config=label_config, source=source,
        merge=parse_merges(merges), class_field=class_field,
        tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device,
        bands=parse_bands(bands), tta=tta, json_path=json_path, plot_dir=plot_dir, log=say,
    )  # fmt: skip
    click.echo(result.table())
    for path in result.plots:
        say(f"saved {path}")


@main.command()
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


@main.group("qgis")
def qgis_group() -> None:
    """The QGIS plugin: Processing tools that run this environment's geoseg from QGIS."""


@qgis_group.command("install")
@click.option("--profile", default="default", show_default=True, help="QGIS user profile.")
@click.option("--no-enable", is_flag=True, help="Only copy it; enable it in QGIS's plugin manager.")
@handle_errors
def qgis_install(profile: str, no_enable: bool) -> None:
    r"""Copy the plugin into a QGIS profile; it will run the geoseg of this environment.

    Profiles are where QGIS keeps them: $QGIS_CUSTOM_CONFIG_PATH/profiles when that is set, else
    ~/.local/share/QGIS/QGIS3/profiles (Linux), ~/Library/Application Support/QGIS/QGIS3/profiles
    (macOS) or %APPDATA%\QGIS\QGIS3\profiles (Windows).
    """
    from geoseg.qgis_install import install_plugin

    click.echo(install_plugin(profile, enable=not no_enable).summary())


@qgis_group.command("zip")
@click.option(
    "-o",
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=Path("geoseg_qgis.zip"),
    show_default=True,
    help="Zip file to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@handle_errors
def qgis_zip(out_path: Path, overwrite: bool) -> None:
    """Write the plugin as a zip for QGIS's Plugins > Manage and Install Plugins > Install from ZIP.

    The zip records this environment's geoseg; where that path does not exist, the plugin uses
    the geoseg executable set in its Processing settings, else geoseg on PATH.
    """
    from geoseg.qgis_install import write_zip

    click.echo(f"wrote {write_zip(out_path, overwrite=overwrite)}")
