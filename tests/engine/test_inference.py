"""Test-time augmentation: transforms undone exactly, probabilities averaged, wired end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import geoseg
from geoseg.cli import main
from geoseg.config import InferenceConfig, config_from_mapping
from geoseg.engine.inference import TTA_TRANSFORMS, Predictor, tta_forward, tta_inverse
from geoseg.errors import ConfigError, ModelError
from geoseg.model import ModelCard, SegmentationModel
from geoseg.training.evaluate import evaluate
from geoseg.types import ClassTable
from tests.conftest import conv_model

torch = pytest.importorskip("torch")


class PositionModel(torch.nn.Module):
    """Logits that depend on where a pixel is in the tile (not equivariant to any flip)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.mix = torch.nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):  # noqa: D102
        n, _, h, w = x.shape
        ramp_y = torch.linspace(-2, 2, h).view(1, 1, h, 1).expand(n, 1, h, w)
        ramp_x = torch.linspace(-1, 3, w).view(1, 1, 1, w).expand(n, 1, h, w)
        logits = self.mix(x)
        return logits + torch.cat([ramp_y, ramp_x, ramp_x * ramp_y], 1)[:, : logits.shape[1]]


def wrap(module, classes: int = 3) -> SegmentationModel:
    card = ModelCard(
        arch="custom", encoder="none", bands=("red", "green", "blue"), mean=(0.0,) * 3,
        std=(1.0,) * 3, classes=ClassTable.default(classes), tile_size=32, output_stride=1,
    )  # fmt: skip
    return SegmentationModel(module.eval(), card)


def softmax_np(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference_tta(module, x: np.ndarray, mode: str) -> np.ndarray:
    """An independent numpy version: transform with np.rot90/np.flip, undo, average."""
    views = []
    for turns, mirror in TTA_TRANSFORMS[mode]:
        v = x[..., ::-1] if mirror else x
        v = np.rot90(v, turns, axes=(-2, -1)).copy()
        with torch.inference_mode():
            p = softmax_np(module(torch.from_numpy(v)).numpy())
        p = np.rot90(p, -turns, axes=(-2, -1))
        views.append(p[..., ::-1] if mirror else p)
    return np.mean(views, axis=0)


@pytest.mark.parametrize(("turns", "mirror"), TTA_TRANSFORMS["d4"])
def test_inverse_undoes_each_transform(turns, mirror):
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    y = tta_forward(x, turns, mirror)
    assert y.shape[-2:] == ((4, 6) if turns % 2 == 0 else (6, 4))
    assert torch.equal(tta_inverse(y, turns, mirror), x)


@pytest.mark.parametrize(("mode", "count"), [("none", 1), ("mirror", 2), ("flips", 4), ("d4", 8)])
def test_transform_sets_are_distinct_symmetries(mode, count):
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    images = {tuple(tta_forward(x, t, m).flatten().tolist()) for t, m in TTA_TRANSFORMS[mode]}
    assert len(images) == len(TTA_TRANSFORMS[mode]) == count


@pytest.mark.parametrize("mode", ["mirror", "flips", "d4"])
@pytest.mark.parametrize("shape", [(32, 32), (32, 48)])
def test_predictor_averages_softmax_over_undone_transforms(mode, shape):
    module = PositionModel()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, *shape)).astype(np.float32)
    got = Predictor(wrap(module), "cpu", tta=mode).predict(x)
    plain = Predictor(wrap(module), "cpu").predict(x)
    assert got.shape == plain.shape == (2, 3, *shape)
    np.testing.assert_allclose(got, reference_tta(module, x, mode), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(got, plain, atol=1e-3)  # the position term makes TTA matter


@pytest.mark.parametrize("mode", ["mirror", "flips", "d4"])
def test_equivariant_model_is_unchanged_by_tta(mode):
    """A per-pixel model commutes with every flip/rotation: TTA must give the same output."""
    module = torch.nn.Conv2d(3, 4, 1)
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    with_tta = Predictor(wrap(module, 4), "cpu", tta=mode).predict(x)
    without = Predictor(wrap(module, 4), "cpu").predict(x)
    np.testing.assert_allclose(with_tta, without, rtol=1e-5, atol=1e-6)


def test_unknown_tta_is_refused():
    with pytest.raises(ConfigError, match="inference.tta must be one of none, mirror, flips, d4"):
        InferenceConfig(tta="rot")
    with pytest.raises(ModelError, match="model card tta 'rot' must be one of"):
        dataclasses.replace(conv_model().card, tta="rot")
    with pytest.raises(ConfigError, match="inference.tta"):
        config_from_mapping({"inference": {"tta": "all"}})
    with pytest.raises(ConfigError, match="unknown --tta"):
        Predictor(conv_model(), "cpu", tta="rot")


def test_segment_with_tta(make_raster, tmp_path):
    scene = make_raster(height=90, width=100)
    model = conv_model(3, 4)
    kw = {"tile_size": 64, "overlap": 16, "vectorize": False, "preview": False}
    plain = geoseg.segment(scene, tmp_path / "plain", model=model, **kw)
    lines: list[str] = []
    d4 = geoseg.segment(scene, tmp_path / "d4", model=model, tta="d4", log=lines.append, **kw)
    assert any("tta d4 x8" in line for line in lines)
    with rasterio.open(plain.classes_path) as a, rasterio.open(d4.classes_path) as b:
        plain_classes, d4_classes = a.read(1), b.read(1)
    assert d4_classes.shape == plain_classes.shape and (d4_classes != 255).all()
    # A 3x3 conv stack is not rotation-equivariant, so some pixels change, but most agree.
    changed = (plain_classes != d4_classes).mean()
    assert 0 < changed < 0.5


def test_model_card_tta_is_the_default_and_an_explicit_tta_wins(make_raster, tmp_path):
    scene = make_raster(height=90, width=100)
    plain = conv_model(3, 4)
    flips = SegmentationModel(plain.module, dataclasses.replace(plain.card, tta="flips"))
    kw = {"tile_size": 64, "overlap": 16, "vectorize": False, "preview": False}

    def run(name, model, **extra):
        lines: list[str] = []
        result = geoseg.segment(
            scene, tmp_path / name, model=model, log=lines.append, **kw, **extra
        )
        with rasterio.open(result.classes_path) as ds:
            classes = ds.read(1)
        settings = json.loads((result.out_dir / "run.json").read_text())["settings"]
        return classes, settings["tta"], " ".join(lines)

    by_card, tta, log = run("card", flips)
    assert tta == "flips" and "tta flips x4" in log
    asked, tta, _ = run("asked", plain, tta="flips")
    assert tta == "flips" and np.array_equal(by_card, asked)
    off, tta, log = run("off", flips, tta="none")
    assert tta == "none" and "tta" not in log.split("cpu (")[-1].split(")")[0]
    assert np.array_equal(off, run("plain", plain)[0]) and not np.array_equal(off, by_card)


def test_cli_tta_option(tiny_checkpoint, make_raster, tmp_path):
    scene = make_raster(height=70, width=80)
    result = CliRunner().invoke(
        main,
        ["run", str(scene), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "out"),
         "--tta", "flips", "--tile-size", "64", "--overlap", "16", "--no-vector"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tta flips x4" in result.output
    bad = CliRunner().invoke(main, ["run", str(scene), "--tta", "rot90"])
    assert bad.exit_code == 2 and "rot90" in bad.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tta_on_cuda_with_fp16_matches_cpu():
    module = PositionModel()
    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    cpu = Predictor(wrap(module), "cpu", tta="d4").predict(x)
    gpu = Predictor(wrap(PositionModel()), "cuda", tta="d4").predict(x)
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)


def test_evaluate_scores_the_tta_prediction(tiny_checkpoint, make_raster, tmp_path):
    scene = make_raster(height=90, width=100)
    kw = {"tile_size": 64, "overlap": 16}
    d4 = geoseg.segment(
        scene, tmp_path / "d4", model=tiny_checkpoint, tta="d4", vectorize=False, **kw
    )
    # labels = the d4 prediction: evaluate with d4 matches it exactly, without TTA it does not
    assert evaluate(tiny_checkpoint, [scene], [d4.classes_path], tta="d4", **kw).summary[
        "pixel_accuracy"
    ] == pytest.approx(1.0)
    plain = evaluate(tiny_checkpoint, [scene], [d4.classes_path], **kw)
    assert plain.summary["pixel_accuracy"] < 1.0
    cli = CliRunner().invoke(
        main,
        ["evaluate", "-m", str(tiny_checkpoint), "--tta", "d4", "--tile-size", "64",
         "--overlap", "16", str(scene), str(d4.classes_path)],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert "pixel accuracy       1.0000" in cli.output
