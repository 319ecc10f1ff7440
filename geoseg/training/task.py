"""The Lightning task a run trains: torchgeo's segmentation task with any smp architecture.

:class:`GeosegSegmentationTask` builds its network through :func:`geoseg.model.create_module`,
learns set-valued labels with :class:`~geoseg.training.losses.SetCrossEntropy`, optimises with
AdamW on the schedule of :mod:`~geoseg.training.schedule`, scores validation on whole held-out
images per region, and carries the training time and the geoseg model card in its checkpoints.
Its keyword arguments are the checkpoints' hyper-parameters: renaming one breaks resuming (and
:func:`geoseg.model.load_model` on) the runs saved before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torchgeo.trainers import SemanticSegmentationTask

from geoseg.model import canonical_arch, create_module, output_stride_of
from geoseg.training import metrics as seg_metrics
from geoseg.training import schedule
from geoseg.training.datasets import region_of
from geoseg.training.label_sets import IGNORE_INDEX, LabelSets, merge_confusion
from geoseg.training.losses import SetCrossEntropy, SetCrossEntropyDice
from geoseg.training.outliers import OutlierExposure, no_outliers

# The run's logger (train.log): every training module logs under the same name.
log = logging.getLogger("geoseg.training.train")


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
        ignore_index: int | None = IGNORE_INDEX,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "onecycle",
        max_steps: int = 1000,
        patience: int = 10,
        logit_offsets: Sequence[float] | None = None,
        label_sets: Sequence[Sequence[int]] | None = None,
        geoseg_card: Mapping[str, Any] | None = None,
        selection: str = "mean",
        outlier_exposure: Mapping[str, float] | None = None,
        freeze_batchnorm: bool = False,
        tile_consistency: float = 0.0,
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
        self.exposure = OutlierExposure.from_config(outlier_exposure) if outlier_exposure else None
        self.sets = LabelSets(num_classes, tuple(tuple(m) for m in label_sets or ()))
        membership = torch.from_numpy(self.sets.membership())
        first = torch.tensor([self.sets.members(c)[0] for c in range(self.sets.num_codes)])
        self.register_buffer("membership", membership, persistent=False)
        self.register_buffer("first_member", first, persistent=False)
        # The start model a fine-tune is pulled toward (anchor_to), kept out of the task's
        # submodules so that it is neither optimised nor saved.
        self._anchor: tuple[torch.nn.Module, float] | None = None
        # One confusion matrix per held-out group (e.g. "dubai/tile_2").
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
        """Build the network of ``arch``/``backbone`` through :func:`geoseg.model.create_module`."""
        hp = self.hparams
        self.model = create_module(
            hp["arch"],
            hp["backbone"],
            hp["in_channels"],
            hp["num_classes"],
            **dict(hp.get("arch_kwargs") or {}),
        )

    def train(self, mode: bool = True) -> GeosegSegmentationTask:
        """Train mode, with every BatchNorm layer held in eval mode under ``freeze_batchnorm``.

        Held BatchNorm layers normalise with the start model's running statistics and do not
        update them (their affine scale and shift still learn). Lightning does not call this
        at the start of training (``on_train_start`` does) and restores each layer's own mode
        after a validation.
        """
        super().train(mode)
        if mode and self.hparams.get("freeze_batchnorm", False):
            for layer in self.modules():
                if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    layer.eval()
        return self

    def anchor_to(self, start: torch.nn.Module, weight: float) -> None:
        """Add ``weight`` times the KL divergence from ``start``'s predictions to the loss.

        ``start`` (frozen, in eval mode) sees the same labelled crops as the network; the
        divergence is logged as ``train_anchor_loss``. Outlier crops are not anchored.
        """
        start.eval().requires_grad_(False)
        self._anchor = (start, weight)

    def configure_losses(self) -> None:
        """The loss: set-valued ce (+ Dice), torchgeo's ce/focal, or smp's dice/jaccard (+ ce)."""
        hp = self.hparams
        if hp.get("label_sets"):
            sets = LabelSets(int(hp["num_classes"]), tuple(map(tuple, hp["label_sets"])))
            if hp["loss"] == "ce+dice":
                self.criterion = SetCrossEntropyDice(sets, hp["class_weights"])
            else:
                self.criterion = SetCrossEntropy(sets, hp["class_weights"])
            return
        if hp["loss"] not in ("dice", "jaccard", "ce+dice"):
            super().configure_losses()  # ce, focal: torchgeo's, with the ignore index
            return
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
        """AdamW on the configured learning-rate schedule."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"]
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": schedule.lightning_scheduler(
                optimizer, str(hp["scheduler"]), int(hp["max_steps"]), hp["patience"], self.monitor
            ),
        }

    @property
    def train_seconds(self) -> float:
        """Seconds spent in ``fit`` by this run so far, resumed sessions included."""
        return self.seconds_before + time.perf_counter() - self.session_started

    def on_fit_start(self) -> None:
        """Start this session's training clock (and put the anchor on the task's device)."""
        self.session_started = time.perf_counter()
        if self._anchor is not None:
            self._anchor[0].to(self.device)

    def on_train_start(self) -> None:
        """Enter train mode, BatchNorm held under ``freeze_batchnorm`` (see :meth:`train`)."""
        self.train()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the training time so far beside the weights."""
        checkpoint["geoseg_train_seconds"] = self.train_seconds

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the training time; take the loss and schedule from the current config."""
        self.seconds_before = float(checkpoint.get("geoseg_train_seconds", 0.0))
        # The loss is the current config's (its class weights, its label sets), whatever
        # state an earlier loss left in the checkpoint.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("criterion.")]:
            del state[key]
        state.update({f"criterion.{k}": v for k, v in self.criterion.state_dict().items()})
        # The step schedules follow the current config's max_steps (a run may be resumed with
        # a longer or shorter one): only the step is kept from the checkpoint.
        if self.hparams["scheduler"] != "plateau":
            schedule.restart_from_step(
                checkpoint,
                float(self.hparams["lr"]),
                int(self.hparams["max_steps"]),
                str(self.hparams["scheduler"]),
            )
        super().on_load_checkpoint(checkpoint)

    def _logits_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Logits of batch ``x`` and its loss, the outlier crops' loss added when exposed.

        One forward on the batch with its outlier crops (none without exposure: the batch as
        it is); the outliers' loss is logged as ``train_outlier_loss``. Under
        ``tile_consistency`` a window of half each side of the crops is also seen alone, and
        that weight times the KL divergence from the whole crops' prediction there (held
        fixed) to the window's is added (``train_tile_consistency_loss``): less context must
        not change the class.
        """
        exposure = self.exposure
        outliers, counted = exposure.outliers(x) if exposure is not None else no_outliers(x)
        logits = self(torch.cat([x, outliers]))
        logits, outlier_logits = logits[: len(x)], logits[len(x) :]
        loss = self.criterion(logits, y)
        if exposure is not None and len(outliers):
            outlier_loss = exposure.loss(outlier_logits, counted)
            self.log("train_outlier_loss", outlier_loss, batch_size=len(outliers))
            loss = loss + exposure.weight * outlier_loss
        if self._anchor is not None:
            start, weight = self._anchor
            with torch.no_grad():
                target = torch.log_softmax(start(x).float(), dim=1)
            anchor_loss = anchor_divergence(logits, target)
            self.log("train_anchor_loss", anchor_loss, batch_size=len(x))
            loss = loss + weight * anchor_loss
        consistency = float(self.hparams.get("tile_consistency", 0.0))
        if consistency:
            window = half_window(x.shape[-2], x.shape[-1], output_stride_of(self.model))
            if window is not None:
                rows, cols = window
                whole = torch.log_softmax(logits[..., rows, cols].detach().float(), dim=1)
                alone = anchor_divergence(self(x[..., rows, cols]), whole)
                self.log("train_tile_consistency_loss", alone, batch_size=len(x))
                loss = loss + consistency * alone
        return logits, loss

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """The loss of one batch of crops (logged with the running metrics)."""
        x, y = batch["image"], batch["mask"]
        logits, loss = self._logits_and_loss(x, y)
        # torchgeo's running metrics know single classes only: score set labels resolved.
        self.train_metrics(logits, self._resolve(y, logits.argmax(dim=1)))
        self.log_dict(self.train_metrics, batch_size=x.shape[0])
        self.log("train_loss", loss, batch_size=x.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        """Start the validation's confusion matrices afresh."""
        self._confusion = {}

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Add one whole held-out image to its group's confusion matrix."""
        x, y = batch["image"], batch["mask"]
        logits, loss = self._logits_and_loss(x, y)
        self.log("val_loss", loss, batch_size=x.shape[0], on_epoch=True)
        k = int(self.hparams["num_classes"])
        if self.logit_offsets is not None:
            # Score what is exported: logits with the prior correction folded in.
            logits = logits + self.logit_offsets.to(logits.device, logits.dtype)
        pred = logits.argmax(dim=1)
        y = self._resolve(y, pred)
        valid = (y >= 0) & (y < k)
        group = str(batch.get("group", ["all"])[0])
        cm = torch.bincount(y[valid] * k + pred[valid], minlength=k * k)
        self._confusion[group] = self._confusion.get(group, torch.zeros_like(cm)) + cm

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
        """Log ``val_miou`` (the selection score) and ``val_accuracy``, and a line per group.

        With ``selection="worst"`` the score is the lowest coarse mIoU of the held-out groups,
        so no one place can carry a checkpoint; with ``"mean"`` it is the mean over regions
        (sources), each region's groups pooled.
        """
        k = int(self.hparams["num_classes"])
        names = [f"class_{i}" for i in range(k)]
        card = self.hparams.get("geoseg_card")
        if isinstance(card, Mapping):
            names = [c["name"] for c in card["classes"]]
        # The coarse classes when the config has them (a source labelled with a set, like
        # Dubai's vegetation, cannot tell its members apart).
        coarse = dict(card.get("training", {}).get("coarse") or {}) if card else {}
        matrices = {g: flat.reshape(k, k).cpu().numpy() for g, flat in self._confusion.items()}
        if self.hparams.get("selection", "mean") != "worst":
            pooled: dict[str, Any] = {}
            for group, cm in matrices.items():
                region = region_of(group)
                pooled[region] = pooled.get(region, 0) + cm
            matrices = pooled
        groups, selection = {}, {}
        for group, cm in sorted(matrices.items()):
            groups[group] = seg_metrics.summarize(cm, names)
            merged = merge_confusion(cm, names, coarse) if coarse else (cm, names)
            selection[group] = seg_metrics.summarize(*merged)
        mious = [r["miou"] or 0.0 for r in selection.values()]
        worst = self.hparams.get("selection", "mean") == "worst"
        miou = (float(np.min(mious)) if worst else float(np.mean(mious))) if mious else 0.0
        accuracy = [r["pixel_accuracy"] or 0.0 for r in selection.values()]
        self.log("val_miou", miou, prog_bar=True)
        self.log("val_accuracy", float(np.mean(accuracy)) if accuracy else 0.0)
        if not self.trainer.sanity_checking:
            self._log_validation(groups, selection, coarse=bool(coarse))
            log.info(
                "validation step %d: selection score %.4f (%s of %d)",
                self.global_step,
                miou,
                "worst" if worst else "mean",
                len(mious),
            )

    def _log_validation(
        self,
        regions: Mapping[str, Mapping[str, Any]],
        selection: Mapping[str, Mapping[str, Any]],
        *,
        coarse: bool,
    ) -> None:
        """One line per region: mIoU, pixel accuracy, per-class IoU (and the coarse scores)."""
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


def half_window(height: int, width: int, stride: int) -> tuple[slice, slice] | None:
    """A random window of about half each side of a ``height`` x ``width`` crop, or None.

    Its edges and offsets are multiples of ``stride``, so that it meets the network's pooling
    grid as a tile of a scene does (the engine's tiles start at multiples of it); None when the
    crop is too small to hold a window of at least one stride.
    """
    h, w = (height // 2) // stride * stride, (width // 2) // stride * stride
    if h < stride or w < stride:
        return None
    top = int(torch.randint(0, (height - h) // stride + 1, ())) * stride
    left = int(torch.randint(0, (width - w) // stride + 1, ())) * stride
    return slice(top, top + h), slice(left, left + w)


def anchor_divergence(logits: torch.Tensor, start_log_probs: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel KL divergence KL(start || network), ``(N, K, H, W)`` inputs.

    ``start_log_probs`` are the start model's log-probabilities; zero exactly when the network
    predicts the same distribution at every pixel.
    """
    log_probs = torch.log_softmax(logits.float(), dim=1)
    divergence = torch.nn.functional.kl_div(
        log_probs, start_log_probs, reduction="none", log_target=True
    )
    return divergence.sum(dim=1).mean()


class _SumLoss(torch.nn.Module):
    """The sum of two losses (cross-entropy + Dice)."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.first(logits, target) + self.second(logits, target)  # type: ignore[no-any-return]
