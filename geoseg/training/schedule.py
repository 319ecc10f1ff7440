"""The learning-rate schedule of a run: one-cycle or cosine by step, or on a validation plateau.

The step schedules are a function of ``(step, max_steps)`` alone (:func:`lr_factor`), rebuilt
from the current config on every session: a run resumed with a longer or shorter
``max_steps`` keeps its step and follows the new schedule from there
(:func:`restart_from_step`).
"""

from __future__ import annotations

import math
from typing import Any

import torch


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


def lightning_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, max_steps: int, patience: int, monitor: str
) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry for ``kind`` (``onecycle``, ``cosine`` or ``plateau``).

    ``plateau`` lowers the rate when ``monitor`` (a score to maximise) stops rising for
    ``patience`` validations; the others step with every training step.
    """
    if kind == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", patience=patience
        )
        return {"scheduler": plateau, "monitor": monitor}
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, max_steps, kind)
    )
    return {"scheduler": sched, "interval": "step"}


def restart_from_step(checkpoint: dict[str, Any], lr: float, max_steps: int, kind: str) -> None:
    """Rewrite a checkpoint's step-schedule state to keep only its step (in place).

    The rest (base rate, last rate) is recomputed from the current ``lr``, ``max_steps`` and
    ``kind``, so that the restored scheduler follows the current config's schedule. A checkpoint
    without scheduler state is left as it is.
    """
    states = checkpoint.get("lr_schedulers") or []
    if not states:
        return
    step = int(states[0].get("last_epoch", checkpoint.get("global_step", 0)))
    checkpoint["lr_schedulers"] = [
        {
            "last_epoch": step,
            "_step_count": step + 1,
            "base_lrs": [lr],
            "_last_lr": [lr * lr_factor(step, max_steps, kind)],
            "lr_lambdas": [None],
        }
    ]
