"""Where a run's weights come from and which it ends with: resuming, fine-tuning, the best one.

A run resumes from its own Lightning checkpoint (:func:`resume_path`), but only one of the same
network and legend (:func:`check_resumable`); a fresh run starts from ImageNet encoder weights or
from another geoseg model (``model.init``: :func:`load_init_model`, :func:`initialize_from`),
see :func:`load_starting_weights`; at the end the checkpoint with the best validation mIoU is
exported (:func:`best_checkpoint`).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from geoseg.errors import ConfigError, ModelError, TrainingError
from geoseg.model import SegmentationModel, fold_logit_offsets, load_model
from geoseg.training import pretrained
from geoseg.training.config import TrainConfig

# The run's logger (train.log): every training module logs under the same name.
log = logging.getLogger("geoseg.training.train")

#: Hyper-parameters a run can only resume with unchanged: they shape the network or the labels.
RESUME_FIXED = ("model", "backbone", "arch_kwargs", "in_channels", "num_classes", "label_sets")


def resume_path(ckpt_path: str | Path | None, resume: bool, last: Path) -> str | None:
    """The checkpoint a run resumes from: ``ckpt_path`` if given, else ``last`` if ``resume``.

    Raises:
        TrainingError: when ``ckpt_path`` names no file.
    """
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise TrainingError(f"checkpoint to resume from {ckpt_path} does not exist")
        return str(ckpt_path)
    return str(last) if resume and last.is_file() else None


def read_checkpoint(path: str) -> Mapping[str, Any]:
    """A Lightning checkpoint's contents, memory-mapped on the CPU.

    Raises:
        TrainingError: when the file cannot be read as a checkpoint.
    """
    try:
        payload: Mapping[str, Any] = torch.load(
            path, map_location="cpu", weights_only=False, mmap=True
        )
    except Exception as exc:  # torch raises many types for corrupt checkpoints
        raise TrainingError(f"cannot read checkpoint {path} to resume from: {exc}") from exc
    return payload


def checkpoint_step(path: str) -> int:
    """The training step a Lightning checkpoint was saved at."""
    return int(read_checkpoint(path).get("global_step", 0))


def check_resumable(path: str, hparams: Mapping[str, Any]) -> None:
    """Refuse to resume a checkpoint of another network or legend than the config builds.

    Raises:
        ConfigError: naming what differs and how to start another run instead.
    """
    saved = dict(read_checkpoint(path).get("hyper_parameters") or {})
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


def load_init_model(init: str | Path) -> SegmentationModel:
    """The model ``model.init`` names: ``"default"`` (the shipped model) or a checkpoint path."""
    try:
        return load_model(None if init == "default" else init)
    except ModelError as exc:
        raise ConfigError(f"model.init: {exc}") from exc


def load_starting_weights(
    module: torch.nn.Module,
    cfg: TrainConfig,
    init: SegmentationModel | None,
    class_names: Sequence[str],
    offsets: Sequence[float] | None,
) -> None:
    """Give a fresh run's network its starting weights: ``model.init``'s, or ImageNet's encoder.

    Without either the network keeps its random initialisation; a resumed run gets its weights
    from its checkpoint instead, so this is not called for it.
    """
    if init is None and cfg.model.encoder_weights == "imagenet":
        copied = pretrained.load_imagenet_encoder(module, cfg.model.encoder)
        log.info("encoder %s: %d ImageNet tensors loaded", cfg.model.encoder, copied)
    if init is not None:
        fresh = initialize_from(module, init, class_names, offsets)
        if fresh:
            log.info("trained afresh (the init model's legend differs): %s", ", ".join(fresh))


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
