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
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import ConfigError, TrainingError
from geoseg.model import SegmentationModel, canonical_arch, create_module
from geoseg.training import data as train_data
from geoseg.training import metrics as seg_metrics
from geoseg.training.config import DataConfig, TrainConfig, load_config
from geoseg.training.export import build_card, export_checkpoint
from geoseg.training.label_sets import LabelSets, merge_confusion

__all__ = ["TrainConfig", "TrainResult", "export_checkpoint", "load_config", "load_data", "train"]

if TYPE_CHECKING:
    import torch

log = logging.getLogger("geoseg.training.train")


def load_data(cfg: TrainConfig) -> list[train_data.LabelledImage]:
    """Every labelled image the config's sources name, in memory (groups prefixed by source)."""
    items: list[train_data.LabelledImage] = []
    for source in cfg.sources:
        items += _load_source(cfg, source)
    bands = {item.image.shape[0] for item in items}
    if len(bands) > 1:
        raise TrainingError(
            f"the training images have different band counts {sorted(bands)}; choose the same "
            "bands from every source with data.bands"
        )
    dtypes = {str(item.image.dtype) for item in items}
    if len(dtypes) > 1:
        raise TrainingError(
            f"the training images have different data types {sorted(dtypes)}; one normalisation "
            "cannot fit them: convert the sources to one type first (e.g. gdal_translate -ot)"
        )
    return items


def _load_source(cfg: TrainConfig, source: DataConfig) -> list[train_data.LabelledImage]:
    ignore = list(source.ignore)
    if source.labels:
        encoding = train_data.encoding_from_labels(
            source.labels, cfg.classes, cfg.label_sets, ignore
        )
    else:
        encoding = train_data.encoding_from_classes(cfg.class_entries, cfg.classes, ignore)
    prefix = source.group("")
    if source.source == "folders":
        assert source.root is not None
        return train_data.load_folder_pairs(
            source.root,
            source.images,
            source.masks,
            encoding,
            bands=source.bands,
            pair_key=source.pair_key,
            group_prefix=prefix,
        )
    items = [
        train_data.load_raster_scene(
            Path(s["image"]),
            Path(s["labels"]),
            encoding,
            class_field=s.get("class_field"),
            bands=source.bands,
        )
        for s in source.scenes
    ]
    return [dataclasses.replace(i, name=prefix + i.name, group=prefix + i.group) for i in items]


def _task_class() -> Any:
    """The Lightning task class (built lazily so importing geoseg.training.train stays cheap)."""
    import torch
    from torchgeo.trainers import SemanticSegmentationTask

    class GeosegSegmentationTask(SemanticSegmentationTask):
        """torchgeo's segmentation task with any smp architecture and whole-image validation.

        Validation accumulates one confusion matrix over all held-out images and logs
        ``val_miou`` (which checkpointing and early stopping monitor) and ``val_accuracy``
        (pixel accuracy). ``geoseg_card`` travels in the hyper-parameters so the Lightning
        checkpoint alone is loadable by :func:`geoseg.model.load_model`.
        """

        monitor = "val_miou"
        mode = "max"

        def __init__(
            self,
            *,
            arch: str = "unet",
            backbone: str = "resnet18",
            arch_kwargs: Mapping[str, Any] | None = None,
            in_channels: int = 3,
            num_classes: int = 2,
            loss: str = "ce",
            class_weights: Sequence[float] | None = None,
            ignore_index: int | None = train_data.IGNORE_INDEX,
            lr: float = 1e-3,
            weight_decay: float = 1e-4,
            scheduler: str = "onecycle",
            max_steps: int = 1000,
            patience: int = 10,
            logit_offsets: Sequence[float] | None = None,
            label_sets: Sequence[Sequence[int]] | None = None,
            geoseg_card: Mapping[str, Any] | None = None,
        ) -> None:
            # torchgeo's own 'model' switch knows only a few names; configure_models below
            # builds any smp architecture through geoseg.model instead.
            super().__init__(
                model="unet",
                backbone=backbone,
                weights=None,
                in_channels=in_channels,
                task="multiclass",
                num_classes=num_classes,
                loss=loss,  # type: ignore[arg-type]  # validated against LOSSES
                class_weights=list(class_weights) if class_weights is not None else None,
                ignore_index=ignore_index,
                lr=lr,
                patience=patience,
            )
            self.hparams["model"] = canonical_arch(arch)
            self.sets = LabelSets(num_classes, tuple(tuple(m) for m in label_sets or ()))
            membership = torch.from_numpy(self.sets.membership())
            first = torch.tensor([self.sets.members(c)[0] for c in range(self.sets.num_codes)])
            self.register_buffer("membership", membership, persistent=False)
            self.register_buffer("first_member", first, persistent=False)
            # One confusion matrix per region (the source a validation image comes from).
            self._confusion: dict[str, torch.Tensor] = {}
            # Training time over every session of the run, carried in the checkpoints.
            self.seconds_before = 0.0
            self.session_started = time.perf_counter()
            # Saved in the hyper-parameters: load_model folds them into the exported network.
            self.logit_offsets = (
                torch.tensor(list(logit_offsets), dtype=torch.float32).view(1, -1, 1, 1)
                if logit_offsets is not None
                else None
            )

        def configure_models(self) -> None:
            hp = self.hparams
            self.model = create_module(
                hp["arch"],
                hp["backbone"],
                hp["in_channels"],
                hp["num_classes"],
                **dict(hp.get("arch_kwargs") or {}),
            )

        def configure_losses(self) -> None:
            hp = self.hparams
            if hp.get("label_sets"):
                from geoseg.training.losses import SetCrossEntropy

                sets = LabelSets(int(hp["num_classes"]), tuple(map(tuple, hp["label_sets"])))
                self.criterion = SetCrossEntropy(sets, hp["class_weights"])
                return
            if hp["loss"] not in ("dice", "jaccard", "ce+dice"):
                super().configure_losses()  # ce, focal: torchgeo's, with the ignore index
                return
            import segmentation_models_pytorch as smp

            # smp's region losses take the ignore index themselves (torchgeo's jaccard passes
            # a class list instead, which fails on ignored pixels).
            region_cls = smp.losses.JaccardLoss if hp["loss"] == "jaccard" else smp.losses.DiceLoss
            region = region_cls(mode="multiclass", ignore_index=hp["ignore_index"])
            if hp["loss"] != "ce+dice":
                self.criterion = region
                return
            weights = hp["class_weights"]
            ce = torch.nn.CrossEntropyLoss(
                ignore_index=hp["ignore_index"] if hp["ignore_index"] is not None else -1000,
                weight=torch.tensor(weights, dtype=torch.float32) if weights else None,
            )
            self.criterion = _SumLoss(ce, region)

        def configure_optimizers(self) -> Any:
            hp = self.hparams
            optimizer = torch.optim.AdamW(
                self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"]
            )
            if hp["scheduler"] == "plateau":
                plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode="max", patience=hp["patience"]
                )
                return {
                    "optimizer": optimizer,
                    "lr_scheduler": {"scheduler": plateau, "monitor": self.monitor},
                }
            total, kind = int(hp["max_steps"]), str(hp["scheduler"])
            sched = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: lr_factor(step, total, kind)
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": sched, "interval": "step"},
            }

        @property
        def train_seconds(self) -> float:
            """Seconds spent in ``fit`` by this run so far, resumed sessions included."""
            return self.seconds_before + time.perf_counter() - self.session_started

        def on_fit_start(self) -> None:
            self.session_started = time.perf_counter()

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["geoseg_train_seconds"] = self.train_seconds

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.seconds_before = float(checkpoint.get("geoseg_train_seconds", 0.0))
            # The loss is the current config's (its class weights, its label sets), whatever
            # state an earlier loss left in the checkpoint.
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith("criterion.")]:
                del state[key]
            state.update({f"criterion.{k}": v for k, v in self.criterion.state_dict().items()})
            # The schedule is a function of (step, max_steps) rebuilt from the current config,
            # so a run can be resumed with a longer or shorter max_steps: keep only the step.
            states = checkpoint.get("lr_schedulers") or []
            if self.hparams["scheduler"] != "plateau" and states:
                step = int(states[0].get("last_epoch", checkpoint.get("global_step", 0)))
                lr = float(self.hparams["lr"])
                factor = lr_factor(step, int(self.hparams["max_steps"]), self.hparams["scheduler"])
                checkpoint["lr_schedulers"] = [
                    {
                        "last_epoch": step,
                        "_step_count": step + 1,
                        "base_lrs": [lr],
                        "_last_lr": [lr * factor],
                        "lr_lambdas": [None],
                    }
                ]
            super().on_load_checkpoint(checkpoint)

        def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            x, y = batch["image"], batch["mask"]
            logits = self(x)
            loss = self.criterion(logits, y)
            # torchgeo's running metrics know single classes only: score set labels resolved.
            self.train_metrics(logits, self._resolve(y, logits.argmax(dim=1)))
            self.log_dict(self.train_metrics, batch_size=x.shape[0])
            self.log("train_loss", loss, batch_size=x.shape[0])
            return loss

        def on_validation_epoch_start(self) -> None:
            self._confusion = {}

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            x, y = batch["image"], batch["mask"]
            logits = self(x)
            loss = self.criterion(logits, y)
            self.log("val_loss", loss, batch_size=x.shape[0], on_epoch=True)
            k = int(self.hparams["num_classes"])
            if self.logit_offsets is not None:
                # Score what is exported: logits with the prior correction folded in.
                logits = logits + self.logit_offsets.to(logits.device, logits.dtype)
            pred = logits.argmax(dim=1)
            y = self._resolve(y, pred)
            valid = (y >= 0) & (y < k)
            region = str(batch.get("region", ["all"])[0])
            cm = torch.bincount(y[valid] * k + pred[valid], minlength=k * k)
            self._confusion[region] = self._confusion.get(region, torch.zeros_like(cm)) + cm

        def _resolve(self, y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
            """Set-valued labels scored as :meth:`~geoseg.training.label_sets.LabelSets.resolve`."""
            k = int(self.hparams["num_classes"])
            is_set = (y >= k) & (y < self.sets.num_codes)
            if not bool(is_set.any()):
                return y
            codes = torch.where(is_set, y, torch.zeros_like(y))
            membership: torch.Tensor = self.membership  # type: ignore[assignment]
            first: torch.Tensor = self.first_member  # type: ignore[assignment]
            single = torch.where(membership[codes, pred], pred, first[codes])
            return torch.where(is_set, single, y)

        def on_validation_epoch_end(self) -> None:
            k = int(self.hparams["num_classes"])
            names = [f"class_{i}" for i in range(k)]
            card = self.hparams.get("geoseg_card")
            if isinstance(card, Mapping):
                names = [c["name"] for c in card["classes"]]
            # Model selection weighs each region alike, whatever its pixel count, and scores the
            # coarse classes when the config has them (a source labelled with a set, like Dubai's
            # vegetation, cannot tell its members apart).
            coarse = dict(card.get("training", {}).get("coarse") or {}) if card else {}
            regions, selection = {}, {}
            for region, flat in sorted(self._confusion.items()):
                cm = flat.reshape(k, k).cpu().numpy()
                regions[region] = seg_metrics.summarize(cm, names)
                merged = merge_confusion(cm, names, coarse) if coarse else (cm, names)
                selection[region] = seg_metrics.summarize(*merged)
            mious = [r["miou"] or 0.0 for r in selection.values()]
            miou = float(np.mean(mious)) if mious else 0.0
            accuracy = [r["pixel_accuracy"] or 0.0 for r in selection.values()]
            self.log("val_miou", miou, prog_bar=True)
            self.log("val_accuracy", float(np.mean(accuracy)) if accuracy else 0.0)
            if self.trainer.sanity_checking:
                return
            for region, summary in regions.items():
                per = ", ".join(
                    f"{n} {v['iou']:.3f}" if v["iou"] is not None else f"{n} -"
                    for n, v in summary["per_class"].items()
                )
                log.info(
                    "validation step %d%s: mIoU %.4f  pixel accuracy %.4f  IoU: %s%s",
                    self.global_step,
                    "" if region == "all" else f" {region}",
                    summary["miou"] or 0.0,
                    summary["pixel_accuracy"] or 0.0,
                    per,
                    f"  (coarse: mIoU {selection[region]['miou'] or 0.0:.4f}, pixel accuracy "
                    f"{selection[region]['pixel_accuracy'] or 0.0:.4f})"
                    if coarse
                    else "",
                )

    class _SumLoss(torch.nn.Module):
        """The sum of two losses (cross-entropy + Dice)."""

        def __init__(self, first: torch.nn.Module, second: torch.nn.Module) -> None:
            super().__init__()
            self.first, self.second = first, second

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return self.first(logits, target) + self.second(logits, target)  # type: ignore[no-any-return]

    return GeosegSegmentationTask


def lr_factor(step: int, total: int, kind: str) -> float:
    """Learning-rate multiplier at ``step`` of ``total``.

    ``onecycle``: linear warm-up from 0.1 to 1 over the first 10% of steps, then cosine decay to
    0.01 (as ``torch.optim.lr_scheduler.OneCycleLR`` with ``div_factor=10``,
    ``final_div_factor=100``). ``cosine``: cosine decay from 1 to 0.01. Past ``total`` the final
    value holds.
    """
    total = max(total, 1)
    step = min(max(step, 0), total)
    floor = 0.01
    warm = int(0.1 * total) if kind == "onecycle" else 0
    if step < warm:
        return 0.1 + 0.9 * step / warm
    progress = (step - warm) / max(total - warm, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _progress_callback(every: int, total: int) -> Any:
    from lightning.pytorch.callbacks import Callback

    class StepLogger(Callback):
        """One log line every ``every`` steps: loss, learning rate and seconds per step."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.last_step = 0

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            step = int(trainer.global_step)
            if step % every or step == self.last_step:
                return
            now = time.perf_counter()
            per_step = (now - self.t0) / max(step - self.last_step, 1)
            self.t0, self.last_step = now, step
            loss = outputs["loss"].item() if isinstance(outputs, Mapping) else float(outputs)
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            log.info("step %d/%d  loss %.4f  lr %.2e  %.2f s/step", step, total, loss, lr, per_step)

    return StepLogger()


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
    import torch
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    if max_steps is not None:
        cfg = dataclasses.replace(
            cfg, training=dataclasses.replace(cfg.training, max_steps=max_steps)
        )
    if export is not None:
        cfg = dataclasses.replace(cfg, export=Path(export))
    tc = cfg.training
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    _configure_logging(out / "train.log")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    resume_from = _resume_path(ckpt_path, resume, out / "checkpoints" / "last.ckpt")
    start_step = _checkpoint_step(resume_from) if resume_from else 0
    # Offset by the step so that a resumed run draws new crops instead of replaying the first ones.
    seed_everything(tc.seed + start_step, workers=True, verbose=False)
    started = time.perf_counter()

    items = load_data(cfg)
    train_items, val_items = train_data.split_by_group(items, cfg.val_groups)
    for side, chosen in (("train", train_items), ("val", val_items)):
        for group, n, px in train_data.iter_groups(chosen):
            log.info("%s: %s  %d images  %.2f Mpx", side, group, n, px / 1e6)
    init = load_init_model(cfg.model.init) if cfg.model.init is not None else None
    bands = items[0].image.shape[0]
    if init is None and cfg.model.encoder_weights == "imagenet":
        from geoseg.training import pretrained

        pretrained.weights_file(cfg.model.encoder)  # fail early when the package is missing
        if bands != 3 or items[0].image.dtype != np.uint8:
            raise ConfigError(
                f"model.encoder_weights: imagenet weights take 8-bit RGB, but the training images "
                f"have {bands} bands of {items[0].image.dtype}; choose 3 uint8 bands with "
                "data.bands, or use encoder_weights: null"
            )
        mean, std = [pretrained.MEAN] * bands, [pretrained.STD] * bands
    elif init is None:
        mean, std = train_data.band_statistics(train_items)
    else:
        if init.card.in_channels != items[0].image.shape[0]:
            raise ConfigError(
                f"model.init: {init.card.name} takes {init.card.in_channels} bands "
                f"({', '.join(init.card.bands)}) but the training images have "
                f"{items[0].image.shape[0]}; choose bands with data.bands"
            )
        # The starting weights expect the inputs normalised as they were trained.
        mean, std = list(init.card.mean), list(init.card.std)
        log.info("fine-tuning %s (%s); its band mean/std are kept", init.card.name, cfg.model.init)
        if cfg.model.encoder_weights:
            log.info("model.encoder_weights is unused: the init model's weights come first")
    sets = cfg.label_sets
    if sets.sets and tc.loss != "ce":
        raise ConfigError(
            f"training.loss {tc.loss!r} cannot learn set-valued labels (data.labels entries "
            "with several classes); use loss: ce, which becomes the set-valued cross-entropy"
        )
    freq = train_data.class_frequencies(train_items, sets.num_codes)
    weights = _class_weights(tc.class_weights, freq, sets.num_codes)
    k = len(cfg.classes)
    offsets = (
        logit_offsets(weights[:k] if weights else None)
        if tc.prior_correction and tc.loss == "ce"
        else None
    )
    log.info("band mean %s std %s", _r(mean), _r(std))
    log.info("class shares %s  loss weights %s", _r(list(freq)), _r(weights) if weights else None)
    if offsets is not None:
        log.info("prior correction: logit offsets %s folded into the exported model", _r(offsets))

    card = build_card(cfg, items[0].image, mean, std, freq, offsets, init=init)
    task_cls = _task_class()
    task = task_cls(
        arch=cfg.model.arch,
        backbone=cfg.model.encoder,
        arch_kwargs=dict(cfg.model.arch_kwargs),
        in_channels=card.in_channels,
        num_classes=card.num_classes,
        loss=tc.loss,
        class_weights=weights,
        ignore_index=cfg.ignore_index,
        lr=float(tc.lr),
        weight_decay=float(tc.weight_decay),
        scheduler=tc.scheduler,
        max_steps=tc.max_steps,
        patience=max(tc.early_stopping_patience // 2, 1),
        logit_offsets=offsets,
        label_sets=[list(m) for m in sets.sets] or None,
        geoseg_card=card.to_dict(),
    )
    if resume_from:
        check_resumable(resume_from, task.hparams)
    if init is None and cfg.model.encoder_weights == "imagenet" and not resume_from:
        from geoseg.training import pretrained

        copied = pretrained.load_imagenet_encoder(task.model, cfg.model.encoder)
        log.info("encoder %s: %d ImageNet tensors loaded", cfg.model.encoder, copied)
    if init is not None and not resume_from:
        fresh = initialize_from(task.model, init, card.classes.names, offsets)
        if fresh:
            log.info("trained afresh (the init model's legend differs): %s", ", ".join(fresh))
    stride = int(getattr(task.model.encoder, "output_stride", 32))
    train_set = train_data.RandomCropDataset(
        train_items,
        tc.crop,
        tc.steps_per_epoch * tc.batch_size,
        mean,
        std,
        seed=tc.seed,
        sampling=tc.sampling,
        scale=tc.scale,
        color_jitter=float(tc.color_jitter),
        hue_shift=_hue_shift(tc.hue_shift, card.classes.names),
    )
    val_set = train_data.WholeImageDataset(val_items, mean, std, stride=stride)
    train_loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        train_set,  # type: ignore[arg-type]
        batch_size=tc.batch_size,
        shuffle=False,
        num_workers=tc.num_workers,
        persistent_workers=tc.num_workers > 0,
        drop_last=True,
    )
    val_loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        val_set,  # type: ignore[arg-type]
        batch_size=1,
        num_workers=0,
    )

    ckpt_dir = out / "checkpoints"
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{step}-{val_miou:.4f}",
        monitor="val_miou",
        mode="max",
        save_top_k=1,
    )
    periodic_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="last",
        every_n_train_steps=tc.checkpoint_every_n_steps,
        save_top_k=1,
        enable_version_counter=False,
    )
    # Not strict: a run resumed or stopped between validations has no val_miou yet.
    early_cb = EarlyStopping(
        monitor="val_miou",
        mode="max",
        patience=tc.early_stopping_patience,
        strict=False,
        check_on_train_epoch_end=False,
    )
    trainer = Trainer(
        accelerator=tc.accelerator,
        devices=1,
        precision=tc.precision,  # type: ignore[arg-type]
        max_steps=min(stop_after or tc.max_steps, tc.max_steps),
        max_time=(datetime.timedelta(minutes=stop_after_minutes) if stop_after_minutes else None),
        max_epochs=-1,
        callbacks=[
            best_cb,
            periodic_cb,
            early_cb,
            _progress_callback(tc.log_every_n_steps, tc.max_steps),
        ],
        logger=CSVLogger(out, name="logs"),
        log_every_n_steps=tc.log_every_n_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, start_step)
    log.info(
        "training %s/%s on %s: %d steps of %d x %d² crops",
        cfg.model.arch,
        cfg.model.encoder,
        trainer.strategy.root_device,
        tc.max_steps,
        tc.batch_size,
        tc.crop,
    )
    trainer.fit(
        task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume_from
    )

    last = ckpt_dir / "last.ckpt"
    trainer.save_checkpoint(last)  # the final step, so a longer run can resume from it
    if trainer.global_step % tc.steps_per_epoch and not trainer.interrupted:
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
    seconds = time.perf_counter() - started
    log.info("training done in %.0f s at step %d; best %s", seconds, trainer.global_step, best)
    exported = None
    result_metrics: Mapping[str, Any] = {}
    if cfg.export is not None:
        model, result_metrics = export_checkpoint(
            best,
            cfg.export,
            val_items=val_items,
            training_info={
                "steps": int(trainer.global_step),
                "exported_step": _checkpoint_step(str(best)),
                "seconds": round(task.train_seconds),
                "seconds_last_session": round(seconds),
                "device": str(trainer.strategy.root_device),
                "torch_threads": torch.get_num_threads(),
            },
        )
        exported = cfg.export
    return TrainResult(
        best,
        last if last.exists() else None,
        exported,
        result_metrics,
        seconds,
        trainer.global_step,
    )


def _resume_path(ckpt_path: str | Path | None, resume: bool, last: Path) -> str | None:
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise TrainingError(f"checkpoint to resume from {ckpt_path} does not exist")
        return str(ckpt_path)
    return str(last) if resume and last.is_file() else None


def best_checkpoint(ckpt_dir: Path) -> Path | None:
    """The ``best-step=N-val_miou=X.ckpt`` with the highest X in ``ckpt_dir`` (None if none).

    Read from the file names rather than the callback's memory, which a resumed run restores
    from a checkpoint written before its last validation.
    """
    scored = []
    for path in ckpt_dir.glob("best-*.ckpt"):
        match = re.search(r"val_miou=([0-9.]+?)(?:-v\d+)?\.ckpt$", path.name)
        if match:
            scored.append((float(match.group(1)), path.stat().st_mtime, path))
    return max(scored)[2] if scored else None


def _read_checkpoint(path: str) -> Mapping[str, Any]:
    import torch

    try:
        payload: Mapping[str, Any] = torch.load(
            path, map_location="cpu", weights_only=False, mmap=True
        )
    except Exception as exc:  # torch raises many types for corrupt checkpoints
        raise TrainingError(f"cannot read checkpoint {path} to resume from: {exc}") from exc
    return payload


def _checkpoint_step(path: str) -> int:
    return int(_read_checkpoint(path).get("global_step", 0))


#: Hyper-parameters a run can only resume with unchanged: they shape the network or the labels.
RESUME_FIXED = ("model", "backbone", "arch_kwargs", "in_channels", "num_classes", "label_sets")


def _hue_shift(raw: Mapping[str, Any] | None, names: Sequence[str]) -> train_data.HueShift | None:
    """The dataset's :class:`~geoseg.training.data.HueShift` from the validated config section."""
    if raw is None:
        return None
    ids = tuple(list(names).index(c) for c in raw["classes"])
    return train_data.HueShift(ids, raw["degrees"], raw["probability"], raw["brightness"])


def check_resumable(path: str, hparams: Mapping[str, Any]) -> None:
    """Refuse to resume a checkpoint of another network or legend than the config builds.

    Raises:
        ConfigError: naming what differs and how to start another run instead.
    """
    saved = dict(_read_checkpoint(path).get("hyper_parameters") or {})
    changed = [
        f"{key}: {saved.get(key)!r} -> {hparams.get(key)!r}"
        for key in RESUME_FIXED
        if _plain(saved.get(key)) != _plain(hparams.get(key))
    ]
    if changed:
        raise ConfigError(
            f"cannot resume {path}: it was trained with another network or legend "
            f"({'; '.join(changed)}); start a separate run with --set output_dir=runs/NAME "
            "(and --export), or start this one afresh with --no-resume"
        )


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, so saved and new hyper-parameters compare."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _class_weights(
    setting: str | tuple[float, ...] | None, freq: npt.NDArray[np.float64], k: int
) -> list[float] | None:
    if setting is None:
        return None
    if setting == "auto":
        return train_data.inverse_frequency_weights(freq)
    assert isinstance(setting, tuple)
    if len(setting) != k:
        raise ConfigError(f"training.class_weights has {len(setting)} values for {k} classes")
    return list(setting)


def logit_offsets(weights: Sequence[float] | None) -> list[float] | None:
    """Prior correction for class-weighted cross-entropy: ``-log(weight)`` per class.

    Weighting class ``k``'s loss by ``w_k`` makes the trained network estimate posteriors
    proportional to ``w_k p(k | x)``: rare classes are over-predicted, which helps them get
    learnt but costs pixel accuracy and skews the confidences. Adding ``-log w_k`` to the
    logits undoes that tilt (post-hoc logit adjustment, Menon et al., ICLR 2021). Classes with
    weight 0 (absent from the training data) get no offset.
    """
    if not weights:
        return None
    return [-math.log(w) if w > 0 else 0.0 for w in weights]


def load_init_model(init: str | Path) -> SegmentationModel:
    """The model ``model.init`` names: ``"default"`` (the shipped model) or a checkpoint path."""
    from geoseg.errors import ModelError
    from geoseg.model import load_model

    try:
        return load_model(None if init == "default" else init)
    except ModelError as exc:
        raise ConfigError(f"model.init: {exc}") from exc


def initialize_from(
    module: torch.nn.Module,
    init: SegmentationModel,
    class_names: Sequence[str],
    offsets: Sequence[float] | None,
) -> list[str]:
    """Copy ``init``'s weights into a freshly built network, for fine-tuning.

    The network must be the same architecture, encoder and band count. The classification head
    is copied only when ``class_names`` equal the init model's legend, in order; otherwise it
    stays freshly initialised (a new legend is learnt on top of the pretrained features). When
    the new run applies its own prior correction (``offsets``), the init model's folded offsets
    are taken out of its head first, so that they are not counted twice at export.

    Returns:
        The names of the parameters left freshly initialised.

    Raises:
        ConfigError: when the networks do not match.
    """
    import torch

    from geoseg.model import fold_logit_offsets

    source = init.module
    same_legend = list(init.card.classes.names) == list(class_names)
    init_offsets = init.card.training.get("logit_offsets")
    if same_legend and offsets is not None and init_offsets:
        source = copy.deepcopy(source)
        fold_logit_offsets(source, [-float(v) for v in init_offsets])
    src = source.state_dict()
    dst = module.state_dict()
    mismatched = [
        k
        for k in dst
        if not k.startswith("segmentation_head.") and (k not in src or src[k].shape != dst[k].shape)
    ]
    if mismatched or set(src) != set(dst):
        raise ConfigError(
            f"model.init: {init.card.name} is a {init.card.arch}/{init.card.encoder} network "
            f"with {init.card.in_channels} bands and its weights do not fit the one this config "
            f"builds (first mismatch: {(mismatched or sorted(set(src) ^ set(dst)))[0]}); set "
            "model.arch, model.encoder and model.arch_kwargs as the init model has them "
            "(see `geoseg info`), and give it the same number of bands"
        )
    # With the encoder and decoder matched, the same legend means the same head shapes.
    keep = [k for k in dst if same_legend or not k.startswith("segmentation_head.")]
    with torch.no_grad():
        module.load_state_dict({**dst, **{k: src[k].to(dst[k].dtype) for k in keep}})
    return [k for k in dst if k not in keep]


def _r(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geoseg.training.train CONFIG [--max-steps N] [--stop-after N] [--no-resume]``."""
    import argparse

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
