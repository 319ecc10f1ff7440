"""A trained run's model card and its export as a geoseg checkpoint, scored on held-out images.

:func:`build_card` writes down what the run is (network, bands, normalisation, legend, sources,
pixel sizes, label sets); :func:`export_checkpoint` turns the best Lightning checkpoint into the
FP16 geoseg checkpoint that ``geoseg run --model`` reads, with the metrics of exactly those
weights on whole held-out images, per region and on the coarse classes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from geoseg.config import resolve_tta
from geoseg.engine.inference import Predictor
from geoseg.errors import ConfigError
from geoseg.model import (
    ModelCard,
    SegmentationModel,
    canonical_arch,
    create_module,
    fold_logit_offsets,
    fold_temperature,
    load_model,
    output_stride_of,
    save_checkpoint,
)
from geoseg.training import data as train_data
from geoseg.training import metrics as seg_metrics
from geoseg.training.config import DataConfig, TrainConfig, TrainingConfig
from geoseg.training.datasets import WholeImageDataset, region_of
from geoseg.training.label_sets import LabelSets, merge_confusion

# The run's logger (train.log): every training module logs under the same name.
log = logging.getLogger("geoseg.training.train")


def build_card(
    cfg: TrainConfig,
    sample: npt.NDArray[Any],
    mean: Sequence[float],
    std: Sequence[float],
    freq: npt.NDArray[np.float64],
    offsets: Sequence[float] | None = None,
    *,
    init: SegmentationModel | None = None,
) -> ModelCard:
    """The card of a run: what inference needs, and how the weights were made."""
    n = sample.shape[0]
    names = cfg.band_names or tuple(f"band_{i + 1}" for i in range(n))
    if len(names) != n:
        raise ConfigError(f"data.band_names lists {len(names)} bands but the images have {n}")
    module = create_module(
        cfg.model.arch, cfg.model.encoder, n, len(cfg.classes), **dict(cfg.model.arch_kwargs)
    )
    stride = output_stride_of(module)
    if cfg.model.tile_size % stride:
        raise ConfigError(f"model.tile_size {cfg.model.tile_size} must be a multiple of {stride}")
    tc = cfg.training
    return ModelCard(
        arch=canonical_arch(cfg.model.arch),
        encoder=cfg.model.encoder,
        bands=tuple(names),
        mean=tuple(mean),
        std=tuple(std),
        classes=cfg.classes,
        name=cfg.name,
        dtype=str(sample.dtype),
        tile_size=cfg.model.tile_size,
        output_stride=stride,
        ignore_index=cfg.ignore_index,
        arch_kwargs={
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.model.arch_kwargs.items()
        },
        training={
            "config": cfg.name,
            "crop": tc.crop,
            "sampling": tc.sampling,
            "scale": list(tc.scale) if tc.scale else None,
            "color_jitter": tc.color_jitter,
            **_robustness_summary(tc),
            "batch_size": tc.batch_size,
            "loss": tc.loss,
            "lr": tc.lr,
            "scheduler": tc.scheduler,
            "val_groups": list(cfg.val_groups),
            "encoder_weights": cfg.model.encoder_weights,
            "sources": {s.name or "data": _source_summary(s) for s in cfg.sources},
            "label_sets": [[cfg.classes.names[m] for m in ms] for ms in cfg.label_sets.sets]
            or None,
            "coarse": {k: list(v) for k, v in cfg.coarse.items()} or None,
            "class_shares": [round(float(f), 4) for f in freq],
            "logit_offsets": _r(offsets) if offsets is not None else None,
            "init": start_model(init) if init is not None else None,
        },
        gsd_range=gsd_range(cfg),
        tta=cfg.model.tta,
        data_source=cfg.card.get("data_source", ""),
        licence=cfg.card.get("licence", ""),
        description=cfg.card.get("description", ""),
    )


def start_model(init: SegmentationModel) -> str:
    """The start model as a card records it: its name and the digest ``run.json`` gives it.

    Not the path it was read from: a path names a machine's file, and the shipped default's
    file holds another model after the next release.
    """
    from geoseg.engine.journal import model_fingerprint

    return f"{init.card.name} (sha256 {model_fingerprint(init)['sha256'][:16]})"


def gsd_range(cfg: TrainConfig) -> tuple[float, float] | None:
    """Ground sample distances (metres) the model saw: the sources' GSDs over the zoom range.

    A crop zoomed by ``z`` shows a source of GSD ``g`` at ``g / z``. ``None`` unless every
    source states its ``gsd``.
    """
    gsds = [s.gsd for s in cfg.sources]
    if not gsds or any(g is None for g in gsds):
        return None
    low, high = cfg.training.scale or (1.0, 1.0)
    finest = min(g for g in gsds if g is not None) / high
    coarsest = max(g for g in gsds if g is not None) / low
    target = cfg.training.target_gsd
    if target:
        finest = min(finest, float(target["range"][0]))
        coarsest = max(coarsest, float(target["range"][1]))
    return (round(finest, 4), round(coarsest, 4))


def _robustness_summary(tc: TrainingConfig) -> dict[str, Any]:
    """The augmentation and selection settings a card records (those a run set)."""
    out: dict[str, Any] = {}
    if tc.hue_shift:
        out["hue_shift"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in tc.hue_shift.items()
        }
    if tc.photometric:
        out["photometric"] = dict(tc.photometric)
    if tc.target_gsd:
        out["target_gsd"] = {
            "range": list(tc.target_gsd["range"]),
            "probability": tc.target_gsd["probability"],
        }
    if tc.mosaic > 1:
        out["mosaic"] = tc.mosaic
    if tc.crop_sizes:
        out["crop_sizes"] = list(tc.crop_sizes)
    if tc.class_balance:
        out["class_balance"] = tc.class_balance
    if tc.outlier_exposure:
        out["outlier_exposure"] = dict(tc.outlier_exposure)
    if tc.freeze_batchnorm:
        out["freeze_batchnorm"] = True
    if tc.anchor:
        out["anchor"] = float(tc.anchor)
    if tc.tile_consistency:
        out["tile_consistency"] = float(tc.tile_consistency)
    out["selection"] = tc.selection
    return out


def _source_summary(source: DataConfig) -> str:
    where = source.root.name if source.root is not None else f"{len(source.scenes)} scenes"
    gsd = f", {source.gsd:g} m GSD" if source.gsd else ""
    return f"{source.source} {where}{gsd}, held out {list(source.val_groups)}"


def export_checkpoint(
    lightning_ckpt: str | Path,
    out_path: str | Path,
    *,
    val_items: Sequence[train_data.LabelledImage] = (),
    training_info: Mapping[str, Any] | None = None,
    half: bool = True,
    tta: str | None = None,
    average_with: tuple[SegmentationModel, float] | None = None,
    calibrate: bool = False,
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Turn a Lightning checkpoint of this trainer into a geoseg checkpoint (float16 by default).

    When ``val_items`` are given, the exported weights (after the float16 round trip) are scored
    on them as whole images, with the card's test-time augmentation (what ``geoseg run`` does by
    default), and the metrics go into the model card. ``tta`` sets the card's
    default test-time augmentation (None: the checkpoint card's); it changes no weight, so a
    finished run can be exported again with another. ``average_with`` ``(init, share)`` exports
    ``share`` of ``init``'s weights plus the rest of the trained ones (see
    :func:`average_weights`). ``calibrate`` fits a temperature on ``val_items`` (see
    :mod:`geoseg.training.calibration`), folds it into the weights and records it in the card.
    """
    model = load_model(lightning_ckpt)
    if tta:
        model = SegmentationModel(model.module, dataclasses.replace(model.card, tta=tta))
    card = model.card
    if average_with is not None and average_with[1] > 0:
        average_weights(model, *average_with)
    metrics: dict[str, Any] = {}
    if val_items:
        if half:
            # Score what is shipped: weights rounded through float16, as load_model will see them.
            state = {
                k: v.half().float() if v.is_floating_point() else v
                for k, v in model.module.state_dict().items()
            }
            model.module.load_state_dict(state)
        if calibrate:
            model = calibrated(model, val_items)
            card = model.card
        metrics = held_out_metrics(model, val_items)
        log.info("exported model on held-out images: %s", json.dumps(metrics))
    training = dict(card.training)
    training.update(training_info or {})
    card = dataclasses.replace(card, metrics=metrics or dict(card.metrics), training=training)
    model = SegmentationModel(model.module, card)
    save_checkpoint(model, out_path, half=half)
    return model, metrics


def calibrated(
    model: SegmentationModel, items: Sequence[train_data.LabelledImage]
) -> SegmentationModel:
    """``model`` with a temperature fitted on ``items`` folded in, its card's ``calibration`` set.

    Fitted with the card's test-time augmentation (the probabilities users get); the classes
    do not change, only the confidences.
    """
    from geoseg.training import calibration as cal

    tta = resolve_tta(None, model.card.tta)
    sets = card_label_sets(model.card)
    held_out = cal.sample_logits(model, items, tta=tta)
    temperature = cal.fit_temperature(held_out, sets)
    before = {h.group: cal.logits_histogram(h, 1.0, sets) for h in held_out}
    after = {h.group: cal.logits_histogram(h, temperature, sets) for h in held_out}
    fold_temperature(model.module, temperature)
    summary = cal.calibration_card(temperature, before, after)
    log.info("calibration: %s", json.dumps(summary))
    return SegmentationModel(model.module, dataclasses.replace(model.card, calibration=summary))


def check_same_legend(init: SegmentationModel, names: Sequence[str]) -> None:
    """Refuse ``model.init_average`` with an init model of another legend than ``names``.

    Raises:
        ConfigError: saying to drop ``model.init_average`` or to start from a model with the
            config's legend.
    """
    if list(init.card.classes.names) != list(names):
        raise ConfigError(
            f"model.init_average: {init.card.name} has another legend than the trained model; "
            "weights can only be averaged between the same network and legend (set "
            "model.init_average to 0, or give a model.init with the config's classes)"
        )


def average_weights(model: SegmentationModel, other: SegmentationModel, share: float) -> None:
    """Set ``model``'s weights to ``(1 - share) * model + share * other``, in place.

    Weight-space averaging of a fine-tuned network with the one it started from (WiSE-FT,
    Wortsman et al., CVPR 2022): both lie in one basin, and the average often scores better on
    unseen images than either end. BatchNorm statistics are averaged as well. The heads carry
    their prior corrections folded in, so ``other``'s own is swapped for ``model``'s first.

    Raises:
        ConfigError: when the two are not the same network with the same legend.
    """
    check_same_legend(other, model.card.classes.names)
    source = copy.deepcopy(other.module)
    # A calibrated model's logits are divided by its temperature: average the raw ones.
    theirs_t = float(other.card.calibration.get("temperature") or 1.0)
    if theirs_t != 1.0:
        fold_temperature(source, 1.0 / theirs_t)
    theirs = other.card.training.get("logit_offsets")
    ours = model.card.training.get("logit_offsets")
    if theirs or ours:
        k = model.card.num_classes
        pairs = zip(ours or [0.0] * k, theirs or [0.0] * k, strict=True)
        delta = [float(a) - float(b) for a, b in pairs]
        fold_logit_offsets(source, delta)
    mine, src = model.module.state_dict(), source.state_dict()
    if set(mine) != set(src) or any(mine[k].shape != src[k].shape for k in mine):
        raise ConfigError(
            f"model.init_average: {other.card.name} is another network than the trained one"
        )
    averaged = {
        k: torch.lerp(v.float(), src[k].float(), share).to(v.dtype) if v.is_floating_point() else v
        for k, v in mine.items()
    }
    model.module.load_state_dict(averaged)


def held_out_metrics(
    model: SegmentationModel, items: Sequence[train_data.LabelledImage]
) -> dict[str, Any]:
    """The model card's metrics: whole held-out images, per region and pooled, legend and coarse.

    Scored with the card's default test-time augmentation (``tta`` in the metrics), as
    ``geoseg run`` predicts.
    """
    card = model.card
    names = card.classes.names
    coarse = dict(card.training.get("coarse") or {})
    by_group: dict[str, list[train_data.LabelledImage]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item)

    def scores(cm: npt.NDArray[np.int64]) -> dict[str, Any]:
        summary = seg_metrics.summarize(cm, names)
        out = {
            "miou": summary["miou"],
            "pixel_accuracy": summary["pixel_accuracy"],
            "mean_dice": summary["mean_dice"],
            "iou": {n: v["iou"] for n, v in summary["per_class"].items()},
        }
        if coarse:
            merged, merged_names = merge_confusion(cm, names, coarse)
            c = seg_metrics.summarize(merged, merged_names)
            out["coarse"] = {"miou": c["miou"], "pixel_accuracy": c["pixel_accuracy"]}
        return out

    per_group = {g: score_whole_images(model, group) for g, group in sorted(by_group.items())}
    per_region: dict[str, npt.NDArray[np.int64]] = {}
    for group, cm in per_group.items():
        region = region_of(group)
        per_region[region] = per_region.get(region, np.zeros_like(cm)) + cm
    metrics: dict[str, Any] = {
        "split": "whole held-out groups " + ", ".join(sorted(per_group)),
        "tta": resolve_tta(None, card.tta),
        **scores(sum(per_group.values(), np.zeros((len(names),) * 2, np.int64))),
    }
    if len(per_region) > 1:
        metrics["regions"] = {r: scores(cm) for r, cm in per_region.items()}
    if len(per_group) > 1:
        metrics["groups"] = {g: scores(cm) for g, cm in per_group.items()}
        metrics["worst_group"] = worst_group(metrics["groups"])
    return metrics


def worst_group(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The group with the lowest (coarse, where scored) mIoU: ``{"group", "miou"}``."""

    def score(entry: Mapping[str, Any]) -> float:
        chosen = entry.get("coarse") or entry
        return float(chosen["miou"] or 0.0)

    name = min(groups, key=lambda g: score(groups[g]))
    return {"group": name, "miou": round(score(groups[name]), 4)}


def card_label_sets(card: ModelCard) -> LabelSets:
    """The set-valued labels a card's training used (``training.label_sets``, by class name)."""
    names = card.classes.names
    listed = card.training.get("label_sets") or []
    return LabelSets(len(names), tuple(tuple(names.index(n) for n in ms) for ms in listed))


def score_whole_images(
    model: SegmentationModel, items: Sequence[train_data.LabelledImage]
) -> npt.NDArray[np.int64]:
    """Confusion matrix of ``model`` on whole images (each padded to the output stride).

    Set-valued labels count as right where the prediction is one of their classes. Predicted
    by :class:`geoseg.engine.inference.Predictor`, as ``geoseg run`` predicts: with the card's
    test-time augmentation.
    """
    card = model.card
    k = card.num_classes
    sets = card_label_sets(card)
    dataset = WholeImageDataset(items, card.mean, card.std, stride=card.output_stride)
    cm = np.zeros((k, k), dtype=np.int64)
    predictor = Predictor(model, device="cpu")
    for i in range(len(dataset)):
        sample = dataset[i]
        probs = predictor.predict(sample["image"][None].numpy())
        pred = probs.argmax(axis=1)[0].astype(np.uint8)
        truth = sets.resolve(sample["mask"].numpy().astype(np.uint8), pred)
        cm += seg_metrics.confusion_matrix(truth, pred, k)
    return cm


def _r(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]
