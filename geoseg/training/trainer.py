"""The Lightning ``Trainer`` a run fits with: checkpoints, early stopping, progress lines.

Two checkpoint callbacks write into ``output_dir/checkpoints``: ``best-step=N-val_miou=X.ckpt``
(the best validation so far) and ``last.ckpt`` (every ``checkpoint_every_n_steps``, which a
later run resumes from). The callbacks' arguments name their state in the checkpoints, so
changing them breaks resuming the runs saved before.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from geoseg.training.config import TrainingConfig

# The run's logger (train.log): every training module logs under the same name.
log = logging.getLogger("geoseg.training.train")


def build_trainer(
    tc: TrainingConfig,
    out: Path,
    ckpt_dir: Path,
    *,
    stop_after: int | None = None,
    stop_after_minutes: float | None = None,
) -> Trainer:
    """The trainer of ``tc``'s schedule, stopping early at ``stop_after`` steps or minutes.

    Metrics go to ``out/logs`` (CSV), checkpoints to ``ckpt_dir``.
    """
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
    return Trainer(
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
            StepLogger(tc.log_every_n_steps, tc.max_steps),
        ],
        logger=CSVLogger(out, name="logs"),
        log_every_n_steps=tc.log_every_n_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )


class StepLogger(Callback):
    """One log line every ``every`` steps of ``total``: loss, learning rate, seconds per step."""

    def __init__(self, every: int, total: int) -> None:
        self.every, self.total = every, total
        self.t0 = time.perf_counter()
        self.last_step = 0

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the step's line when it is due."""
        step = int(trainer.global_step)
        if step % self.every or step == self.last_step:
            return
        now = time.perf_counter()
        per_step = (now - self.t0) / max(step - self.last_step, 1)
        self.t0, self.last_step = now, step
        loss = outputs["loss"].item() if isinstance(outputs, Mapping) else float(outputs)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        log.info(
            "step %d/%d  loss %.4f  lr %.2e  %.2f s/step", step, self.total, loss, lr, per_step
        )
