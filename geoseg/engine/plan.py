"""A run settled before anything is written: scene, output folder, model, tile grid, partial folder.

:func:`geoseg.segment` checks everything that can be checked up front, in this order, so that a
run that cannot succeed fails before it reads a tile: :func:`open_scene` (readable, georeferenced
or allowed not to be), :func:`check_target` (the output folder), :func:`plan_run` (the model's
pixel type and bands, the grid tiles are read on, the tile grid) and :func:`open_partial` (the
memory the run needs, then the partial folder whose journal makes it resumable).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.config import RunConfig, resolve_tta
from geoseg.engine.loop import Log
from geoseg.errors import (
    OutputError,
    OutputExistsError,
    ResolutionWarning,
    UngeoreferencedWarning,
    warn,
)
from geoseg.model import SegmentationModel, load_default, load_model
from geoseg.types import Stretch

if TYPE_CHECKING:
    from geoseg.engine.journal import PartialRun
    from geoseg.engine.loop import TileJob
    from geoseg.engine.tiling import TileGrid
    from geoseg.io.grid import ReadGrid
    from geoseg.io.read import SceneInfo


@dataclass(frozen=True)
class OpenedScene:
    """A scene as opened: its files (one, or a mosaic's members), a mosaic's VRT and its info."""

    members: list[str]
    vrt_xml: str | None  # the mosaic's VRT, written into the partial folder (None: one file)
    info: SceneInfo


@dataclass(frozen=True)
class RunPlan:
    """One run, settled before anything is written: scene, target, model and how tiles are read."""

    scene: OpenedScene
    target: Path
    model: SegmentationModel
    bands: tuple[int, ...]  # 1-based scene bands fed to the model, in the model's order
    cfg: RunConfig
    read_grid: ReadGrid
    grid: TileGrid  # the tile grid over read_grid
    overlap: int
    block: int  # the output rasters' block size
    stretch: Stretch | None = None  # scene values -> the model's (None: as they are)
    stretch_seconds: float = 0.0  # the statistics pass that chose it

    def stretch_settings(self) -> dict[str, Any]:
        """What ``run.json`` and the resume journal record of the scaling: asked for and used."""
        return {"scale": self.cfg.scale,
                "stretch": self.stretch.to_dict() if self.stretch else None}  # fmt: skip

    @property
    def tta(self) -> str:
        """The test-time augmentation the run uses: the one asked for, else the model card's."""
        return resolve_tta(self.cfg.inference.tta, self.model.card.tta)

    def tile_job(self, scene: str, rows_done: int) -> TileJob:
        """What the engine runs over ``scene``; a resumed run starts at its first unwritten row."""
        from geoseg.engine.loop import TileJob
        from geoseg.engine.regrid import first_grid_row

        grid, read_grid = self.grid, self.read_grid
        # a resumed run restarts at the tile row whose band holds the first row not yet written
        grid_row = first_grid_row(read_grid, rows_done)
        done = rows_done >= self.scene.info.height
        first_row = len(grid.rows.starts) if done else grid.rows.band_of(grid_row)
        resampled = read_grid if read_grid.resampled else None
        probabilities = self.cfg.output.probabilities or resampled is not None
        return TileJob(scene, self.bands, grid, self.model.card, self.cfg.inference,
                       probabilities, first_row, resampled, self.stretch)  # fmt: skip


def open_scene(
    scene: str | Path | Sequence[str | Path], *, allow_ungeoreferenced: bool
) -> OpenedScene:
    """Open the scene (one raster, or a list of them as one mosaic) and check it can be segmented.

    Warnings name the caller of :func:`geoseg.segment`, which calls this.
    """
    from geoseg.io import mosaic
    from geoseg.io import read as readmod

    vrt_xml: str | None = None
    if mosaic.is_mosaic(scene):
        members = mosaic.list_members(scene)
        vrt_xml, info = mosaic.build_vrt(members)
    else:
        members = [str(scene)]
        with readmod.open_raster(str(scene)) as ds:
            info = readmod.scene_info(ds)
            alpha_band = readmod.alpha_data_band(ds)
            if alpha_band is not None:
                readmod.warn_alpha_data(ds, alpha_band)
    readmod.validate_scene(info, allow_ungeoreferenced=allow_ungeoreferenced)
    if not info.georeferenced:
        warn(
            f"{info.path} has no georeferencing; outputs carry pixel coordinates",
            UngeoreferencedWarning,
            stacklevel=3,
        )
    return OpenedScene(members, vrt_xml, info)


def check_target(target: Path, *, overwrite: bool) -> None:
    """Refuse an output folder that exists (unless ``overwrite``) or cannot be created."""
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target} exists; pass --overwrite to replace it or -o another folder"
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(
            f"cannot write {target}: folder {parent} does not exist; create it or pass -o with "
            "an existing folder"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {target}: folder {parent} is not writable; pass -o DIR")


def model_for(model: str | Path | SegmentationModel | None, cfg: RunConfig) -> SegmentationModel:
    """The model to run: as given, or the default one for the configured device."""
    if isinstance(model, SegmentationModel):
        return model
    if cfg.model is None or cfg.model == "default":
        return load_default(cfg.inference.device)
    return load_model(cfg.model)


def plan_run(
    scene: OpenedScene,
    target: Path,
    model: SegmentationModel,
    cfg: RunConfig,
    say: Log,
    *,
    resume: bool = False,
) -> RunPlan:
    """Fit ``model`` to ``scene``: its bands and values, the grid tiles are read on, the tiles.

    The scene's values are mapped onto the model's as ``cfg.scale`` says (see
    :mod:`geoseg.io.stretch`); a ``resume`` reuses the mapping the interrupted run recorded. A
    warning about the scene's pixel size names the caller of :func:`geoseg.segment`.
    """
    from geoseg.engine.tiling import make_grid
    from geoseg.io import grid as gridmod
    from geoseg.io.bands import select_bands
    from geoseg.io.write import suggested_block

    info, card = scene.info, model.card
    chosen = select_bands(info, card.bands, cfg.bands)
    t0 = time.perf_counter()
    stretch = _plan_stretch(scene, target, model, chosen, cfg, resume=resume)
    stretch_seconds = time.perf_counter() - t0
    _say_stretch(info, chosen, stretch, say)
    read_grid = gridmod.plan_read(info, card, cfg.tiling.resolution)
    _say_resolution(read_grid, card, cfg.tiling.resolution, say)
    tile_size, overlap = cfg.tiling.resolve(card.tile_size, card.tile_overlap)
    grid = make_grid(
        read_grid.height, read_grid.width, tile_size, overlap, multiple=card.output_stride
    )
    block = suggested_block(info.width, info.height, cfg.output.block_size)
    return RunPlan(scene, target, model, chosen, cfg, read_grid, grid, overlap, block, stretch,
                   stretch_seconds)  # fmt: skip


def _plan_stretch(
    scene: OpenedScene,
    target: Path,
    model: SegmentationModel,
    bands: tuple[int, ...],
    cfg: RunConfig,
    *,
    resume: bool,
) -> Stretch | None:
    """How the scene's values become the model's: recorded by the run resumed, else computed."""
    from geoseg.engine.journal import recorded_settings
    from geoseg.io.sample import scene_stretch

    recorded = recorded_settings(target) if resume else None
    if recorded is not None and recorded.get("scale") == cfg.scale and "stretch" in recorded:
        kept = recorded["stretch"]
        return Stretch.from_dict(kept) if kept is not None else None
    source = scene.vrt_xml if scene.vrt_xml is not None else scene.members[0]
    return scene_stretch(source, scene.info, bands, cfg.scale_spec, model.card.input_spec)


def _say_stretch(info: SceneInfo, bands: Sequence[int], stretch: Stretch | None, say: Log) -> None:
    """One line on how the scene's values are mapped, when they are."""
    if stretch is None:
        return
    windows = ", ".join(
        f"band {b} {lo:.5g}-{hi:.5g}" for b, lo, hi in zip(bands, stretch.low, stretch.high,
                                                           strict=True)
    )  # fmt: skip
    low, high = stretch.out_range
    say(f"geoseg: {info.dtype} values scaled onto the model's {low:g}-{high:g} ({stretch.rule}: "
        f"{stretch.note}): {windows}")  # fmt: skip


def _say_resolution(read_grid: ReadGrid, card: Any, resolution: str | float, say: Log) -> None:
    """Say how a resampled scene is read; warn when a scene is read outside the model's range."""
    if read_grid.resampled:
        say(read_grid.describe())
        return
    gsd, span = read_grid.scene_gsd, card.gsd_range
    if gsd is None or not span or span[0] <= gsd <= span[1]:
        return
    from geoseg.io.grid import auto_gsd

    nearest = auto_gsd(gsd, span)
    why = read_grid.note or (
        f"; --resolution {resolution} was asked (--resolution {nearest:g} reads it at the "
        "nearest pixel size the model was trained at)"
    )
    warn(
        f"the scene's pixels are {gsd:.3g} m, outside the {span[0]:g}-{span[1]:g} m the model "
        f"was trained at, and it is read at that size{why}",
        ResolutionWarning,
        stacklevel=4,  # _say_resolution <- plan_run <- segment <- its caller
    )


def open_partial(plan: RunPlan, *, resume: bool, say: Log) -> PartialRun:
    """Check that the run fits in memory, then open its partial folder (fresh or resumed).

    The journal's fingerprint holds everything that changes output pixels, so that a resumed run
    is refused unless it would write exactly what the interrupted one would have.
    """
    from geoseg.engine.inference import autocast_dtype
    from geoseg.engine.journal import PartialRun, model_fingerprint, scene_fingerprint
    from geoseg.engine.memory import check_memory
    from geoseg.model.device import resolve_device

    card, cfg, grid, info = plan.model.card, plan.cfg, plan.grid, plan.scene.info
    inf = cfg.inference
    device = resolve_device(inf.device)
    check_memory(
        tile_height=grid.rows.size, tile_width=grid.cols.size, bands=len(plan.bands),
        classes=card.num_classes, batch_size=min(inf.batch_size, len(grid)),
        scene_width=max(info.width, plan.read_grid.width), block_size=plan.block,
        multiple=card.output_stride, prefetch_batches=inf.prefetch_batches,
        probabilities=cfg.output.probabilities, device=str(device),
    )  # fmt: skip
    unrelated = {"device", "precision", "read_threads", "prefetch_batches"}
    settings = {
        "tile_size": [grid.rows.size, grid.cols.size],
        "overlap": plan.overlap,
        "bands": list(plan.bands),
        "device": device.type,
        "precision": str(autocast_dtype(device, inf.precision) or "fp32"),
        "probabilities": cfg.output.probabilities,
        "block_size": plan.block,
        **plan.read_grid.settings(),
        **{k: v for k, v in dataclasses.asdict(inf).items() if k not in unrelated},
        "tta": plan.tta,
        **plan.stretch_settings(),
    }
    fingerprint = {
        "scene": scene_fingerprint(info, plan.scene.members),
        "model": model_fingerprint(plan.model),
        "settings": settings,
    }
    return PartialRun.open(plan.target, fingerprint, resume=resume, log=say)


__all__ = ["OpenedScene", "RunPlan", "check_target", "model_for", "open_partial", "open_scene",
           "plan_run"]  # fmt: skip
