"""Training segmentation models from a YAML config: torchgeo's task on Lightning, geoseg export.

``train(config)`` loads the labelled data once into memory, splits it by whole group (tile or
scene), computes per-band normalisation and class weights from the training side, trains a
:class:`GeosegSegmentationTask` (torchgeo's ``SemanticSegmentationTask`` with any smp
architecture, an AdamW + one-cycle/cosine schedule and whole-image validation), keeps the best
checkpoint by validation mIoU, and exports it as a geoseg checkpoint that ``geoseg run --model``
(or, as the shipped default, ``geoseg run``) reads. ``python -m geoseg.training.train CONFIG`` runs
it.

The config (see ``configs/train_default.yaml``)::

    name: geoseg-landcover-dubai
    output_dir: runs/dubai            # Lightning checkpoints, metrics.csv, train.log
    export: model.pt                  # the geoseg checkpoint written at the end
    classes: [{name, color, mask_color | value}, ...]
    data: {source: folders | rasters, ..., val_groups: [...], ignore: [...], band_names: [...]}
    model: {arch, encoder, arch_kwargs, tile_size}
    training: {crop, batch_size, max_steps, steps_per_epoch, lr, loss, class_weights,
               prior_correction, ...}
    card: {data_source, licence, description}

Relative paths are resolved against the config file's folder.

A run's steps live in their own modules: :mod:`~geoseg.training.prepare` (the data, its
normalisation and class weights, the loaders), :mod:`~geoseg.training.task` (the Lightning
task), :mod:`~geoseg.training.trainer` (the ``Trainer`` and its callbacks),
:mod:`~geoseg.training.checkpoints` (resuming, starting weights, the best checkpoint) and
:mod:`~geoseg.training.export` (the geoseg checkpoint and its card).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from geoseg.errors import TrainingError
from geoseg.model import output_stride_of
from geoseg.training.checkpoints import (
    best_checkpoint,
    check_resumable,
    checkpoint_step,
    load_starting_weights,
    resume_path,
)
from geoseg.training.config import TrainConfig, load_config
from geoseg.training.export import export_checkpoint
from geoseg.training.prepare import PreparedData, data_loaders, load_data, prepare_data
from geoseg.training.task import GeosegSegmentationTask
from geoseg.training.trainer import build_trainer

__all__ = ["TrainConfig", "TrainResult", "export_checkpoint", "load_config", "load_data", "train"]

log = logging.getLogger("geoseg.training.train")


def _configure_logging(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(formatter)
    for old in log.handlers:
        old.close()
    log.handlers = [file_handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    if sys.stderr.isatty():
        stream = logging.StreamHandler()
        stream.setFormatter(formatter)
        log.addHandler(stream)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    best_checkpoint: Path
    last_checkpoint: Path | None
    exported: Path | None
    metrics: Mapping[str, Any]
    seconds: float
    steps: int


def train(
    config: str | Path | Mapping[str, Any] | TrainConfig,
    *,
    resume: bool = True,
    ckpt_path: str | Path | None = None,
    max_steps: int | None = None,
    stop_after: int | None = None,
    stop_after_minutes: float | None = None,
    export: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> TrainResult:
    """Train a segmentation model as ``config`` describes and export the best one.

    Args:
        config: A YAML path, a mapping with the same content, or a :class:`TrainConfig`.
        resume: Continue from ``output_dir/checkpoints/last.ckpt`` when it exists.
        ckpt_path: A Lightning checkpoint to resume from (overrides ``resume``).
        max_steps: Override ``training.max_steps`` (e.g. for a quick test).
        stop_after: Stop at this step without shortening the learning-rate schedule, so that a
            later call (resuming) continues the same run; for comparing candidates on equal
            budgets before training the winner to the end.
        stop_after_minutes: Stop once this many minutes of training are spent, keeping the
            schedule as ``stop_after`` does (candidates compared at equal CPU time). Lightning's
            timer counts the minutes of the sessions a resumed run continues, too.
        export: Override where the geoseg checkpoint is written.
        overrides: ``KEY=VALUE`` settings applied to a config path or mapping (see
            :func:`geoseg.training.config.load_config`).

    Returns:
        Paths of the best and last Lightning checkpoints and of the exported geoseg checkpoint,
        with the exported model's validation metrics on the held-out images.
    """
    cfg = _run_config(config, overrides, max_steps=max_steps, export=export)
    resume_from, start_step = _start_session(cfg, ckpt_path, resume)
    started = time.perf_counter()
    data = prepare_data(cfg)
    task = _build_task(cfg, data, resume_from)
    stride = output_stride_of(task.model)
    train_loader, val_loader = data_loaders(cfg, data, stride)
    ckpt_dir = _checkpoint_dir(cfg)
    trainer = build_trainer(
        cfg.training,
        cfg.output_dir,
        ckpt_dir,
        stop_after=stop_after,
        stop_after_minutes=stop_after_minutes,
    )
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, start_step)
    log.info(
        "training %s/%s on %s: %d steps of %d x %d² crops",
        cfg.model.arch,
        cfg.model.encoder,
        trainer.strategy.root_device,
        cfg.training.max_steps,
        cfg.training.batch_size,
        cfg.training.crop,
    )
    trainer.fit(
        task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume_from
    )
    best, last = _final_checkpoints(
        trainer, task, val_loader, ckpt_dir, cfg.training.steps_per_epoch
    )
    seconds = time.perf_counter() - started
    log.info("training done in %.0f s at step %d; best %s", seconds, trainer.global_step, best)
    metrics = _export(cfg, best, data, trainer, task, seconds) if cfg.export is not None else {}
    return TrainResult(
        best,
        last if last.exists() else None,
        cfg.export,
        metrics,
        seconds,
        trainer.global_step,
    )


def _run_config(
    config: str | Path | Mapping[str, Any] | TrainConfig,
    overrides: Sequence[str],
    *,
    max_steps: int | None,
    export: str | Path | None,
) -> TrainConfig:
    """The validated config with the call's ``max_steps`` and ``export`` put in."""
    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    if max_steps is not None:
        cfg = dataclasses.replace(
            cfg, training=dataclasses.replace(cfg.training, max_steps=max_steps)
        )
    if export is not None:
        cfg = dataclasses.replace(cfg, export=Path(export))
    return cfg


def _checkpoint_dir(cfg: TrainConfig) -> Path:
    return cfg.output_dir / "checkpoints"


def _start_session(
    cfg: TrainConfig, ckpt_path: str | Path | None, resume: bool
) -> tuple[str | None, int]:
    """Open the run's folder and log, set threads and seed; the checkpoint to resume and its step.

    Raises:
        TrainingError: when ``ckpt_path`` names no file or the checkpoint cannot be read.
    """
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    _configure_logging(out / "train.log")
    tc = cfg.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    resume_from = resume_path(ckpt_path, resume, _checkpoint_dir(cfg) / "last.ckpt")
    start_step = checkpoint_step(resume_from) if resume_from else 0
    # Offset by the step so that a resumed run draws new crops instead of replaying the first ones.
    seed_everything(tc.seed + start_step, workers=True, verbose=False)
    return resume_from, start_step


def _build_task(
    cfg: TrainConfig, data: PreparedData, resume_from: str | None
) -> GeosegSegmentationTask:
    """The Lightning task: a fresh run's network gets its starting weights, a resumed one a check.

    Raises:
        ConfigError: when the checkpoint to resume is of another network or legend.
    """
    tc, card = cfg.training, data.card
    task = GeosegSegmentationTask(
        arch=cfg.model.arch,
        backbone=cfg.model.encoder,
        arch_kwargs=dict(cfg.model.arch_kwargs),
        in_channels=card.in_channels,
        num_classes=card.num_classes,
        loss=tc.loss,
        class_weights=data.weights,
        ignore_index=cfg.ignore_index,
        lr=float(tc.lr),
        weight_decay=float(tc.weight_decay),
        scheduler=tc.scheduler,
        max_steps=tc.max_steps,
        patience=max(tc.early_stopping_patience // 2, 1),
        logit_offsets=data.offsets,
        label_sets=[list(m) for m in cfg.label_sets.sets] or None,
        geoseg_card=card.to_dict(),
        selection=tc.selection,
        outlier_exposure=dict(tc.outlier_exposure) if tc.outlier_exposure else None,
        freeze_batchnorm=tc.freeze_batchnorm,
        tile_consistency=float(tc.tile_consistency),
    )
    if resume_from:
        check_resumable(resume_from, task.hparams)
    else:
        load_starting_weights(task.model, cfg, data.init, card.classes.names, data.offsets)
    if tc.anchor:
        # The start network as this run's first step sees it, frozen and outside the task's
        # weights and checkpoints; a resumed task's weights come from its checkpoint, so its
        # copy gets model.init's first.
        start = copy.deepcopy(task.model)
        if resume_from:
            load_starting_weights(start, cfg, data.init, card.classes.names, data.offsets)
        task.anchor_to(start, float(tc.anchor))
    return task


def _final_checkpoints(
    trainer: Trainer,
    task: GeosegSegmentationTask,
    val_loader: DataLoader[dict[str, torch.Tensor]],
    ckpt_dir: Path,
    steps_per_epoch: int,
) -> tuple[Path, Path]:
    """Save the final step as ``last.ckpt``, score it if off an epoch end; the best and the last.

    Raises:
        TrainingError: when the run wrote no checkpoint at all.
    """
    last = ckpt_dir / "last.ckpt"
    trainer.save_checkpoint(last)  # the final step, so a longer run can resume from it
    if trainer.global_step % steps_per_epoch and not trainer.interrupted:
        # Stopped between validations (max_steps or stop_after off an epoch boundary): score
        # the final weights too, which at the end of a decaying schedule are often the best.
        scores = trainer.validate(task, dataloaders=val_loader, verbose=False)
        final_miou = float(scores[0]["val_miou"]) if scores else 0.0
        trainer.save_checkpoint(
            ckpt_dir / f"best-step={trainer.global_step}-val_miou={final_miou:.4f}.ckpt"
        )
    best = best_checkpoint(ckpt_dir) or last
    if not best.exists():
        raise TrainingError(f"training wrote no checkpoint into {ckpt_dir}")
    return best, last


def _export(
    cfg: TrainConfig,
    best: Path,
    data: PreparedData,
    trainer: Trainer,
    task: GeosegSegmentationTask,
    seconds: float,
) -> Mapping[str, Any]:
    """Export ``best`` to ``cfg.export`` with how it was trained; its held-out metrics."""
    assert cfg.export is not None
    _, metrics = export_checkpoint(
        best,
        cfg.export,
        val_items=data.val_items,
        training_info={
            "steps": int(trainer.global_step),
            "exported_step": checkpoint_step(str(best)),
            "seconds": round(task.train_seconds),
            "seconds_last_session": round(seconds),
            "device": str(trainer.strategy.root_device),
            "torch_threads": torch.get_num_threads(),
            **({"init_average": cfg.model.init_average} if cfg.model.init_average else {}),
            **_seconds_with_init(data, task.train_seconds),
        },
        tta=cfg.model.tta,
        average_with=(data.init, cfg.model.init_average) if data.init is not None else None,
        calibrate=cfg.model.calibrate,
    )
    return metrics


def _seconds_with_init(data: PreparedData, seconds: float) -> dict[str, int]:
    """``seconds_with_init``: this run's training time plus its init model's, when that is known.

    A fine-tuned model's card then tells the whole training cost, not only the last stage's.
    """
    if data.init is None:
        return {}
    before = data.init.card.training.get(
        "seconds_with_init", data.init.card.training.get("seconds")
    )
    return {"seconds_with_init": round(float(before) + seconds)} if before is not None else {}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geoseg.training.train CONFIG [--max-steps N] [--stop-after N] [--no-resume]``."""
    parser = argparse.ArgumentParser(
        prog="python -m geoseg.training.train", description=main.__doc__
    )
    parser.add_argument("config")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--stop-after-minutes", type=float, default=None)
    parser.add_argument("--export", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    result = train(
        args.config,
        resume=not args.no_resume,
        max_steps=args.max_steps,
        stop_after=args.stop_after,
        stop_after_minutes=args.stop_after_minutes,
        export=args.export,
        overrides=args.overrides,
    )
    print(
        json.dumps(
            {
                "best": str(result.best_checkpoint),
                "exported": str(result.exported),
                "metrics": result.metrics,
                "seconds": round(result.seconds),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
