"""evaluate(): the real pipeline scored against integer, colour and vector labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from geoseg import metrics
from geoseg.errors import InputError
from geoseg.evaluate import evaluate, label_encoding_for, read_labels
from geoseg.model import default_model_path
from tests.conftest import DATA, conv_model, whole_image_classes, write_raster

DUBAI = DATA / "dubai"
TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_default.yaml"


@pytest.fixture
def scene_and_prediction(make_raster) -> tuple[Path, np.ndarray, object]:
    model = conv_model(3, 4, seed=3)
    scene = make_raster(height=90, width=110, count=3, seed=5)
    return scene, whole_image_classes(model, scene), model


def _labels_from(prediction: np.ndarray) -> np.ndarray:
    """Labels that disagree with the prediction in known places, with an ignored block."""
    labels = prediction.copy()
    labels[:10, :] = (labels[:10, :] + 1) % 4  # 10 wrong rows
    labels[-5:, -20:] = 255  # ignored
    return labels


def test_integer_label_raster_gives_the_exact_confusion_matrix(scene_and_prediction, tmp_path):
    scene, prediction, model = scene_and_prediction
    labels = _labels_from(prediction)
    label_path = write_raster(tmp_path / "labels.tif", labels[None].astype(np.uint8))
    result = evaluate(model, [scene], [label_path], json_path=tmp_path / "m.json")
    expected = metrics.confusion_matrix(labels, prediction, 4)
    np.testing.assert_array_equal(result.confusion, expected)
    labelled = int((labels != 255).sum())
    assert result.confusion.sum() == labelled
    assert result.summary["pixel_accuracy"] == pytest.approx(
        (labelled - 10 * 110) / labelled, abs=1e-6
    )
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["miou"] == result.summary["miou"]
    assert saved["images"][0]["megapixels"] == pytest.approx(90 * 110 / 1e6, abs=1e-4)
    assert "mean IoU" in result.table() and "class_0" in result.table()


def test_colour_mask_in_model_colours_and_plots(scene_and_prediction, tmp_path):
    scene, prediction, model = scene_and_prediction
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in model.card.classes:
        lut[c.id] = c.color
    mask_path = tmp_path / "mask.png"
    Image.fromarray(lut[prediction]).save(mask_path)
    result = evaluate(model, [scene], [mask_path], plot_dir=tmp_path / "plots")
    assert result.summary["pixel_accuracy"] == pytest.approx(1.0)
    assert result.summary["miou"] == pytest.approx(1.0)
    names = sorted(p.name for p in result.plots)
    assert names == ["confusion_matrix.png", f"{scene.stem}_comparison.png"]
    for p in result.plots:
        with Image.open(p) as im:
            assert im.width > 300 and im.height > 200


def test_vector_labels_are_rasterized_on_the_image_grid(scene_and_prediction, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    scene, prediction, model = scene_and_prediction
    with rasterio.open(scene) as ds:
        left, bottom, right, top = ds.bounds
        crs = ds.crs
    mid = left + 50 * 10.0  # 10 m pixels: column 50
    frame = gpd.GeoDataFrame(
        {"cls": ["class_1", "class_2"]},
        geometry=[box(left, bottom, mid, top), box(mid, bottom + 300.0, right, top)],
        crs=crs,
    )
    vec = tmp_path / "labels.gpkg"
    frame.to_file(vec)
    labels = np.full(prediction.shape, 255, dtype=np.uint8)
    labels[:, :50] = 1
    labels[: 90 - 30, 50:] = 2
    result = evaluate(model, [scene], [vec], class_field="cls")
    np.testing.assert_array_equal(result.confusion, metrics.confusion_matrix(labels, prediction, 4))
    with pytest.raises(InputError, match="no column 'nope'"):
        evaluate(model, [scene], [vec], class_field="nope")


def test_label_config_maps_dataset_mask_colours() -> None:
    from geoseg.train import load_config

    classes = load_config(TRAIN_CONFIG).classes
    encoding = label_encoding_for(classes, TRAIN_CONFIG)
    image = DUBAI / "tile_2" / "images" / "image_part_007.jpg"
    labels = read_labels(DUBAI / "tile_2" / "masks" / "image_part_007.png", image, encoding)
    assert labels.shape == (544, 509)
    shares = np.bincount(labels.ravel(), minlength=256)
    assert set(np.flatnonzero(shares)) == {0, 1, 2, 3, 4, 255}
    # land is the most common class here; "unlabeled" grey and black are ignored, not classes
    assert shares[:5].argmax() == 1
    with pytest.raises(InputError, match="matches no class"):
        read_labels(
            DUBAI / "tile_2" / "masks" / "image_part_007.png", image, label_encoding_for(classes)
        )  # display colours are not the mask colours


def test_mismatched_inputs_are_refused(scene_and_prediction, tmp_path):
    scene, prediction, model = scene_and_prediction
    small = write_raster(tmp_path / "small.tif", np.zeros((1, 10, 10), dtype=np.uint8))
    with pytest.raises(InputError, match="pixel for pixel"):
        evaluate(model, [scene], [small])
    with pytest.raises(InputError, match="pair them up"):
        evaluate(model, [scene], [])
    with pytest.raises(InputError, match="do not exist"):
        evaluate(model, [scene], [tmp_path / "missing.tif"])


# Measured through the pipeline for the shipped model (5,400 steps on 2 CPU cores, prior
# correction folded in): mIoU 0.589, pixel accuracy 0.781 over the whole held-out tile 2 (the
# README's figures; single images range from 0.33 to 0.66, so one image would be a noisy guard).
# The guard sits above the 0.55 but a little below the measured value, so that any
# regression (normalisation, band order, tiling, legend, a lost prior correction) fails loudly.
MIN_MIOU = 0.56
MIN_PIXEL_ACCURACY = 0.76


@pytest.mark.skipif(not default_model_path().exists(), reason="no shipped default model yet")
def test_shipped_default_model_on_the_held_out_dubai_tile():
    """Regression guard: tile 2 was never trained on (not even for normalisation statistics)."""
    images = sorted((DUBAI / "tile_2" / "images").glob("*.jpg"))
    assert len(images) == 9
    result = evaluate(
        None,
        images,
        [DUBAI / "tile_2" / "masks" / f"{p.stem}.png" for p in images],
        label_config=TRAIN_CONFIG,
    )
    summary = result.summary
    assert summary["miou"] >= MIN_MIOU, result.table()
    assert summary["pixel_accuracy"] >= MIN_PIXEL_ACCURACY, result.table()
    assert summary["per_class"]["water"]["iou"] >= 0.80, result.table()
