"""What a run learns from: its labelled images, split by group, normalised and weighted.

:func:`prepare_data` loads every source of the config into memory (:func:`load_data`), holds out
the validation groups, fixes the band normalisation (the training images' statistics, ImageNet's
for pretrained encoders, or the init model's), the class weights of the loss and the prior
correction that undoes them at export, and writes the model card. :func:`data_loaders` serves
random training crops and whole validation images from the result.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from geoseg.errors import ConfigError, TrainingError
from geoseg.model import ModelCard, SegmentationModel
from geoseg.training import data as train_data
from geoseg.training import pretrained
from geoseg.training.augment import HueShift
from geoseg.training.checkpoints import load_init_model
from geoseg.training.config import DataConfig, TrainConfig
from geoseg.training.datasets import RandomCropDataset, WholeImageDataset
from geoseg.training.export import build_card, check_same_legend
from geoseg.training.label_encoding import encoding_from_classes, encoding_from_labels
from geoseg.training.photometric import SensorJitter

# The run's logger (train.log): every training module logs under the same name.
log = logging.getLogger("geoseg.training.train")
#: The losses with a set-valued form (``geoseg.training.losses``) and a class-weighted
#: cross-entropy whose prior can be corrected at export.
SET_LOSSES = ("ce", "ce+dice")


@dataclass(frozen=True)
class PreparedData:
    """A run's data and what was derived from its training side.

    Attributes:
        train_items: The images crops are drawn from.
        val_items: The held-out images (whole validation groups).
        init: The model ``model.init`` names, whose weights the run starts from, or None.
        mean: Per-band normalisation mean.
        std: Per-band normalisation standard deviation.
        weights: The loss's class weights, one per label code (None: unweighted).
        offsets: The prior correction folded into the exported model, or None.
        card: The model card of the run.
    """

    train_items: list[train_data.LabelledImage]
    val_items: list[train_data.LabelledImage]
    init: SegmentationModel | None
    mean: list[float]
    std: list[float]
    weights: list[float] | None
    offsets: list[float] | None
    card: ModelCard


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load, split, normalise and weigh the config's data, and write the run's model card."""
    items = load_data(cfg)
    train_items, val_items = train_data.split_by_group(items, cfg.val_groups)
    for side, chosen in (("train", train_items), ("val", val_items)):
        for group, n, px in train_data.iter_groups(chosen):
            log.info("%s: %s  %d images  %.2f Mpx", side, group, n, px / 1e6)
    init = load_init_model(cfg.model.init) if cfg.model.init is not None else None
    if init is not None and cfg.model.init_average:
        check_same_legend(init, cfg.classes.names)  # before the training, not at its export
    mean, std = _normalisation(cfg, items[0], train_items, init)
    freq, weights, offsets = _loss_weights(cfg, train_items, mean, std)
    log.info("band mean %s std %s", _r(mean), _r(std))
    log.info("class shares %s  loss weights %s", _r(list(freq)), _r(weights) if weights else None)
    if offsets is not None:
        log.info("prior correction: logit offsets %s folded into the exported model", _r(offsets))
    card = build_card(cfg, items[0].image, mean, std, freq, offsets, init=init)
    return PreparedData(train_items, val_items, init, mean, std, weights, offsets, card)


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
        encoding = encoding_from_labels(source.labels, cfg.classes, cfg.label_sets, ignore)
    else:
        encoding = encoding_from_classes(cfg.class_entries, cfg.classes, ignore)
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
            blocks=source.blocks,
            gsd=source.gsd,
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
    return [
        dataclasses.replace(i, name=prefix + i.name, group=prefix + i.group, gsd=source.gsd)
        for i in items
    ]


def _normalisation(
    cfg: TrainConfig,
    sample: train_data.LabelledImage,
    train_items: Sequence[train_data.LabelledImage],
    init: SegmentationModel | None,
) -> tuple[list[float], list[float]]:
    """Per-band mean and std: the init model's, ImageNet's, or the training images' own."""
    bands, dtype = sample.image.shape[0], sample.image.dtype
    if init is None and cfg.model.encoder_weights == "imagenet":
        pretrained.weights_file(cfg.model.encoder)  # fail early when the package is missing
        if bands != 3 or dtype != np.uint8:
            raise ConfigError(
                f"model.encoder_weights: imagenet weights take 8-bit RGB, but the training images "
                f"have {bands} bands of {dtype}; choose 3 uint8 bands with "
                "data.bands, or use encoder_weights: null"
            )
        return [pretrained.MEAN] * bands, [pretrained.STD] * bands
    if init is None:
        return train_data.band_statistics(train_items)
    if init.card.in_channels != bands:
        raise ConfigError(
            f"model.init: {init.card.name} takes {init.card.in_channels} bands "
            f"({', '.join(init.card.bands)}) but the training images have "
            f"{bands}; choose bands with data.bands"
        )
    # The starting weights expect the inputs normalised as they were trained.
    log.info("fine-tuning %s (%s); its band mean/std are kept", init.card.name, cfg.model.init)
    if cfg.model.encoder_weights:
        log.info("model.encoder_weights is unused: the init model's weights come first")
    return list(init.card.mean), list(init.card.std)


def _loss_weights(
    cfg: TrainConfig,
    train_items: Sequence[train_data.LabelledImage],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[npt.NDArray[np.float64], list[float] | None, list[float] | None]:
    """Label-code shares the loss sees, the loss's class weights, the prior correction.

    The shares are the training images' own, or, with class-balanced crops, those of a sample of
    the crops themselves (the prior the network learns is the crops').

    Raises:
        ConfigError: when set-valued labels meet a loss that cannot learn them.
    """
    tc, sets = cfg.training, cfg.label_sets
    if sets.sets and tc.loss not in SET_LOSSES:
        raise ConfigError(
            f"training.loss {tc.loss!r} cannot learn set-valued labels (data.labels entries "
            "with several classes); use loss: ce or ce+dice, which become the set-valued "
            "cross-entropy (plus the set-valued Dice loss)"
        )
    if tc.class_balance > 0:
        crops = crop_dataset(cfg, train_items, mean, std)
        freq = crops.label_shares(sets.num_codes)
        log.info("class-balanced crops (share %.2f): label shares of 600 crops", tc.class_balance)
    else:
        freq = train_data.class_frequencies(train_items, sets.num_codes)
    weights = _class_weights(tc.class_weights, freq, sets.num_codes)
    k = len(cfg.classes)
    offsets = (
        logit_offsets(weights[:k] if weights else None)
        if tc.prior_correction and tc.loss in SET_LOSSES
        else None
    )
    return freq, weights, offsets


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


def data_loaders(
    cfg: TrainConfig, data: PreparedData, stride: int
) -> tuple[DataLoader[dict[str, torch.Tensor]], DataLoader[dict[str, torch.Tensor]]]:
    """Loaders of random training crops and of whole validation images padded to ``stride``."""
    tc = cfg.training
    train_set = crop_dataset(cfg, data.train_items, data.mean, data.std)
    val_set = WholeImageDataset(data.val_items, data.mean, data.std, stride=stride)
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
    return train_loader, val_loader


def crop_dataset(
    cfg: TrainConfig,
    items: Sequence[train_data.LabelledImage],
    mean: Sequence[float],
    std: Sequence[float],
) -> RandomCropDataset:
    """The training crops of ``cfg``: one epoch's worth, with every augmentation it names."""
    tc = cfg.training
    target = tc.target_gsd
    return RandomCropDataset(
        items,
        tc.crop,
        tc.steps_per_epoch * tc.batch_size,
        mean,
        std,
        seed=tc.seed,
        sampling=tc.sampling,
        scale=tc.scale,
        color_jitter=float(tc.color_jitter),
        hue_shift=_hue_shift(tc.hue_shift, cfg.classes.names),
        photometric=SensorJitter.from_config(tc.photometric) if tc.photometric else None,
        target_gsd=(tuple(target["range"]), float(target["probability"])) if target else None,
        crop_sizes=tc.crop_sizes,
        batch_size=tc.batch_size,
        class_balance=float(tc.class_balance),
        mosaic=tc.mosaic,
    )


def _hue_shift(raw: Mapping[str, Any] | None, names: Sequence[str]) -> HueShift | None:
    """The dataset's :class:`~geoseg.training.data.HueShift` from the validated config section."""
    if raw is None:
        return None
    ids = tuple(list(names).index(c) for c in raw["classes"])
    return HueShift(
        ids, raw["degrees"], raw["probability"], raw["brightness"], raw.get("independent", False)
    )


def _r(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]
