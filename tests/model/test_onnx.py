"""ONNX both ways: export with Deepness metadata, run geoseg and Deepness ONNX models."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tests.conftest import DATA, conv_model, small_smp_checkpoint

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import torch  # noqa: E402

from geoseg.cli import main  # noqa: E402
from geoseg.engine.inference import Normaliser, Predictor  # noqa: E402
from geoseg.errors import ModelError  # noqa: E402
from geoseg.model import load_model, read_card  # noqa: E402
from geoseg.model.onnx import CARD_KEY, load_onnx  # noqa: E402
from geoseg.model.onnx_export import export_onnx  # noqa: E402
from geoseg.model.onnx_module import to_probabilities  # noqa: E402
from geoseg.pipeline import segment  # noqa: E402

DEEPNESS = DATA / "deepness"
ORTHOPHOTO = DEEPNESS / "dummy_fotomap_crop.tif"
OHIO = DATA / "ohio" / "val" / "img" / "tile_14587.tif"
DUBAI = DATA / "dubai" / "tile_2" / "images" / "image_part_007.jpg"
QUIET = {"vectorize": False, "preview": False}


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def metadata_of(path: Path) -> dict[str, str]:
    """``custom_metadata_map`` as Deepness reads it (through onnxruntime)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def rewrite_metadata(source: Path, target: Path, metadata: dict[str, str]) -> Path:
    """A copy of an ONNX file whose metadata is exactly ``metadata``."""
    proto = onnx.load(str(source))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))
    return target


def read_classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    """The shipped default model and its ONNX export (exported once for the module)."""
    model = load_model()
    path = tmp_path_factory.mktemp("onnx") / "default.onnx"
    result = export_onnx(model, path)
    assert result.dynamic_size and result.max_difference < 1e-4
    return model, path


@pytest.fixture
def conv_onnx(tmp_path):
    """A tiny conv model (stride 1, no GSD range) and its ONNX export."""
    model = conv_model(3, 4)
    return model, export_onnx(model, tmp_path / "conv.onnx").path


def real_tiles() -> list[np.ndarray]:
    """Normalised real tiles (1, 3, H, W): a 512 px Dubai crop and a 256 px Ohio NAIP tile."""
    normalise = Normaliser((127.5,) * 3, (127.5,) * 3)
    tiles = []
    for path, size in ((DUBAI, 512), (OHIO, 256)):
        with rasterio.open(path) as ds:
            data = ds.read([1, 2, 3], window=((0, size), (0, size)), boundless=True).astype(
                np.float32
            )
        tiles.append(normalise(data, np.ones(data.shape[1:], bool))[None])
    return tiles


def test_export_round_trip_on_real_tiles(default_onnx, one_torch_thread):
    model, path = default_onnx
    onnx_model = load_model(path)
    assert onnx_model.card == model.card
    torch_predictor, onnx_predictor = Predictor(model, "cpu"), Predictor(onnx_model, "cpu")
    for x in real_tiles():
        expected, got = torch_predictor.predict(x), onnx_predictor.predict(x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-3
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999


def test_metadata_keys_parse_as_deepness_does(default_onnx):
    model, path = default_onnx
    card = model.card
    meta = metadata_of(path)
    values = {key: json.loads(text) for key, text in meta.items()}  # Deepness: json.loads each
    assert values["model_type"] == "Segmentor"
    names = sorted(values["class_names"].items(), key=lambda kv: int(kv[0]))
    assert [int(k) for k, _ in names] == list(range(card.num_classes))
    assert [n for _, n in names] == card.classes.names
    assert values["tile_size"] == values["tiles_size"] == card.tile_size == 512
    assert isinstance(values["tiles_overlap"], int) and values["tiles_overlap"] == 13  # 64 px
    low, high = card.gsd_range
    assert values["resolution"] == pytest.approx(100 * (low * high) ** 0.5, rel=1e-4)
    # Deepness: x / 255, then (x - mean) / std; geoseg: (x - mean) / std on raw values
    pixels = np.array([0.0, 51.0, 200.0, 255.0])
    for band in range(card.in_channels):
        m, s = values["standardization_mean"][band], values["standardization_std"][band]
        geoseg = (pixels - card.mean[band]) / card.std[band]
        np.testing.assert_allclose((pixels / 255 - m) / s, geoseg, rtol=1e-6, atol=1e-6)
    assert values["seg_thresh"] == 0.0
    assert values[CARD_KEY] == json.loads(json.dumps(card.to_dict(), default=str))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[0] == out.shape[0] and isinstance(inp.shape[0], str)  # dynamic batch
    assert out.shape[1] == card.num_classes
    assert onnx.load(str(path)).opset_import[0].version == 17


def test_geoseg_run_agrees_with_torch(default_onnx, tmp_path, one_torch_thread):
    """Whole runs (256 px tiles, blended overlaps) with the ONNX file and with the checkpoint."""
    model, path = default_onnx
    options = {"tile_size": 256, "overlap": 64, "allow_ungeoreferenced": True, **QUIET}
    with pytest.warns(UserWarning, match="georeferencing"):
        a = segment(DUBAI, tmp_path / "torch", model=model, **options)
    with pytest.warns(UserWarning, match="georeferencing"):
        b = segment(DUBAI, tmp_path / "onnx", model=str(path), **options)
    assert a.tiles_total == b.tiles_total > 4
    agree = (read_classes(a.classes_path) == read_classes(b.classes_path)).mean()
    assert agree >= 0.999


def test_deepness_keys_alone_give_the_same_model(conv_onnx, make_raster, tmp_path):
    model, path = conv_onnx
    meta = metadata_of(path)
    only = {k: v for k, v in meta.items() if k != CARD_KEY}
    stripped = rewrite_metadata(path, tmp_path / "deepness_only.onnx", only)
    card = read_card(stripped)
    assert card.classes.names == model.card.classes.names
    np.testing.assert_allclose(card.mean, model.card.mean, rtol=1e-6)
    np.testing.assert_allclose(card.std, model.card.std, rtol=1e-6)
    assert card.tile_size == 64 and card.tile_overlap == 16  # 25 % of 64 px
    assert card.gsd_range is None and card.arch == "onnx"
    scene = make_raster(height=90, width=130)
    full = segment(scene, tmp_path / "full", model=str(path), **QUIET)
    alone = segment(scene, tmp_path / "alone", model=str(stripped), **QUIET)
    assert alone.overlap == 16
    np.testing.assert_array_equal(read_classes(full.classes_path), read_classes(alone.classes_path))


def test_deepness_resolution_and_overlap_become_the_card(conv_onnx, tmp_path):
    _, path = conv_onnx
    meta = {k: v for k, v in metadata_of(path).items() if k != CARD_KEY}
    meta |= {"resolution": "50", "tiles_overlap": "10", "tile_size": "128"}
    meta.pop("tiles_size")
    card = read_card(rewrite_metadata(path, tmp_path / "m.onnx", meta))
    assert card.gsd_range == (0.5, 0.5) and card.tile_size == 128 and card.tile_overlap == 13


def test_model_without_metadata_is_refused(tmp_path):
    model = DEEPNESS / "one_output_softmax_bsx2x512x512.onnx"
    with pytest.raises(ModelError, match="class_names") as info:
        load_model(model)
    assert CARD_KEY in str(info.value) and "geoseg export" in str(info.value)
    result = invoke("run", ORTHOPHOTO, "--model", model, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("geoseg: error:") == 1 and "class_names" in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_corrupt_file_is_refused_and_nothing_is_written(conv_onnx, make_raster, tmp_path, content):
    _, good = conv_onnx
    bad = tmp_path / "bad.onnx"
    data = good.read_bytes()
    bad.write_bytes(b"not an onnx model at all" if content == "garbage" else data[: len(data) // 2])
    scene = make_raster()
    with pytest.raises(ModelError, match="corrupt or not an ONNX model"):
        segment(scene, tmp_path / "out", model=str(bad))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    result = invoke("run", scene, "--model", bad, "-o", tmp_path / "out2", "-q")
    assert result.exit_code == 1 and "corrupt" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out2").exists()


def test_missing_file_and_wrong_model_type(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "none.onnx")
    meta = {"model_type": json.dumps("Detector"), "class_names": json.dumps({"0": "car"})}
    detector = rewrite_metadata(
        DEEPNESS / "one_output_softmax_bsx2x512x512.onnx", tmp_path / "det.onnx", meta
    )
    with pytest.raises(ModelError, match="Deepness Detector model"):
        load_model(detector)


def test_deepness_softmax_model_runs_with_its_own_metadata(tmp_path):
    """Two outputs: the first is used, with its class names; classes equal Deepness's argmax."""
    model_path = DEEPNESS / "two_outputs_softmax_bsx2x512x512.onnx"
    model = load_model(model_path)
    assert model.card.classes.names == ["Coffee", "Tea"]
    assert model.card.tile_size == 512 and model.card.mean == (0.0,) * 3
    result = segment(ORTHOPHOTO, tmp_path / "out", model=model, **QUIET)
    assert result.bands == (1, 2, 3) and result.tiles_total == 2
    # Deepness: RGB / 255 into the graph, argmax of the first output (a 1x1 convolution, so
    # tiling cannot change a pixel); run here on the orthophoto's top-left 512 x 400 px
    with rasterio.open(ORTHOPHOTO) as ds:
        rgb = ds.read([1, 2, 3], window=((0, 400), (0, 512))).astype(np.float32) / 255
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    padded = np.zeros((1, 3, 512, 512), np.float32)
    padded[0, :, :400] = rgb
    expected = session.run(None, {"input": padded})[0][0, :, :400].argmax(0)
    got = read_classes(result.classes_path)[:400, :512]
    assert (got == expected).mean() >= 0.999


@pytest.mark.parametrize(
    "name", ["one_output_sigmoid_bsx1x512x512", "one_output_sigmoid_bsx512x512"]
)
def test_deepness_sigmoid_model_gets_a_background_class(tmp_path, name):
    """One sigmoid channel s: background (p = 1 - s) and the named class (p = s)."""
    model_path = DEEPNESS / f"{name}.onnx"
    model = load_model(model_path)
    assert model.card.classes.names == ["background", "Coffee"]
    result = segment(ORTHOPHOTO, tmp_path / "out", model=model, probabilities=True, **QUIET)
    with rasterio.open(ORTHOPHOTO) as ds:
        rgb = ds.read([1, 2, 3], window=((0, 400), (0, 512))).astype(np.float32) / 255
    padded = np.zeros((1, 3, 512, 512), np.float32)
    padded[0, :, :400] = rgb
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    s = session.run(None, {"input": padded})[0].reshape(512, 512)[:400]
    got = read_classes(result.classes_path)[:400, :512]
    clear = np.abs(s - 0.5) > 1e-3
    np.testing.assert_array_equal(got[clear], (s[clear] > 0.5).astype(np.uint8))
    with rasterio.open(result.probabilities_path) as ds:
        p_class = ds.read(2)[:400, :512].astype(np.float32) / 254
    assert np.abs(p_class - s).max() <= 1 / 254


def test_smaller_output_is_the_centre_of_the_tile(tmp_path):
    """Deepness's 29x29 unpadded convolution (512 -> 484 px) runs once it names its classes."""
    meta = {"model_type": json.dumps("Segmentor"), "class_names": json.dumps({"0": "a", "1": "b"})}
    path = rewrite_metadata(
        DEEPNESS / "different_output_size_512_to_484.onnx", tmp_path / "m.onnx", meta
    )
    model = load_model(path)
    x = np.random.default_rng(0).random((1, 3, 512, 512), np.float32)
    with torch.inference_mode():
        probs = torch.softmax(model.module(torch.from_numpy(x)), 1).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.run(None, {"input": x})[0]
    expected = raw / raw.sum(1, keepdims=True)
    np.testing.assert_allclose(probs[:, :, 14:498, 14:498], expected, atol=1e-6)
    np.testing.assert_allclose(
        probs[:, :, :14, 14:498], expected[:, :, :1].repeat(14, 2), atol=1e-6
    )
    result = segment(ORTHOPHOTO, tmp_path / "out", model=model, **QUIET)
    assert read_classes(result.classes_path).shape == (400, 640)


def test_output_rules():
    s = np.full((2, 4, 6), 0.25, np.float32)
    probs = to_probabilities(s, (4, 6), 2)  # (N, H, W): one sigmoid channel
    assert probs.shape == (2, 2, 4, 6)
    np.testing.assert_allclose(probs[:, 0], 0.75)
    np.testing.assert_allclose(probs[:, 1], 0.25)
    coarse = np.random.default_rng(0).random((1, 3, 2, 3)).astype(np.float32)
    up = to_probabilities(coarse, (8, 12), 3)  # a whole-number factor: upsampled
    assert up.shape == (1, 3, 8, 12)
    np.testing.assert_allclose(up.sum(1), 1.0, rtol=1e-5)
    with pytest.raises(ModelError, match="larger than its input"):
        to_probabilities(np.ones((1, 2, 8, 8), np.float32), (4, 4), 2)
    with pytest.raises(ModelError, match="3 channels but its card has 2"):
        to_probabilities(np.ones((1, 3, 4, 4), np.float32), (4, 4), 2)


def test_tta_pickling_and_fingerprint(conv_onnx, one_torch_thread):
    """TTA averages ONNX outputs like torch ones; the module pickles (dask) without its session."""
    from geoseg.engine.journal import model_fingerprint

    model, path = conv_onnx
    onnx_model = load_onnx(path)
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 40)).astype(np.float32)
    for tta in ("none", "d4"):
        expected = Predictor(model, "cpu", tta=tta).predict(x)
        got = Predictor(onnx_model, "cpu", tta=tta).predict(x)
        assert np.abs(got - expected).max() <= 1e-5
    copy = pickle.loads(pickle.dumps(onnx_model))
    np.testing.assert_allclose(
        Predictor(copy, "cpu").predict(x), Predictor(onnx_model, "cpu").predict(x), atol=1e-6
    )
    assert model_fingerprint(copy) == model_fingerprint(load_onnx(path))
    assert model_fingerprint(copy) != model_fingerprint(model)


def test_dask_engine_runs_onnx_models(conv_onnx, make_raster, tmp_path):
    distributed = pytest.importorskip("distributed")
    from geoseg.distributed import segment_distributed

    model, path = conv_onnx
    scene = make_raster(height=150, width=100)
    local = segment(scene, tmp_path / "local", model=str(path), tile_size=64, **QUIET)
    threads = torch.get_num_threads()
    try:
        with distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster:
            with distributed.Client(cluster) as client:
                dist = segment_distributed(
                    scene,
                    tmp_path / "dist",
                    client=client,
                    rows=1,
                    model=str(path),
                    tile_size=64,
                    **QUIET,
                )
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(read_classes(local.classes_path), read_classes(dist.classes_path))


def test_cli_export_info_and_run(tmp_path, make_raster):
    checkpoint = small_smp_checkpoint(tmp_path / "small.pt", tile_size=64)
    out = tmp_path / "small.onnx"
    result = invoke("export", checkpoint, "-o", out)
    assert result.exit_code == 0, result.output
    assert "opset 17" in result.output and out.is_file()
    assert json.loads(metadata_of(out)["model_type"]) == "Segmentor"
    again = invoke("export", checkpoint, "-o", out)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert invoke("export", checkpoint, "-o", out, "--overwrite").exit_code == 0
    wrong = invoke("export", checkpoint, "-o", tmp_path / "small.bin")
    assert wrong.exit_code == 1 and "*.onnx" in wrong.output
    info = invoke("info", out)
    assert info.exit_code == 0 and "small-resnet10t" in info.output
    scene = make_raster(height=100, width=90)
    run = invoke("run", scene, "--model", out, "-o", tmp_path / "res", "--no-vector", "-q")
    assert run.exit_code == 0, run.output
    assert (tmp_path / "res" / "classes.tif").is_file()
    torch_run = segment(scene, tmp_path / "torch", model=str(checkpoint), **QUIET)
    agree = read_classes(torch_run.classes_path) == read_classes(tmp_path / "res" / "classes.tif")
    assert agree.mean() >= 0.999


def test_cli_export_default_help():
    result = invoke("export", "--help")
    assert result.exit_code == 0 and "Deepness" in result.output and "--opset" in result.output


class SizeFreezingNet(torch.nn.Module):
    """Python ints taken from the input's size: tracing freezes them into the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[2]), int(x.shape[3])
        coarse = torch.nn.functional.avg_pool2d(self.conv(x), 2)
        return torch.nn.functional.interpolate(coarse, size=(height, width), mode="nearest")


def test_graph_that_freezes_sizes_is_exported_for_the_tile_size(make_raster, tmp_path):
    from geoseg.model import SegmentationModel

    model = SegmentationModel(SizeFreezingNet().eval(), conv_model(3, 4).card)
    result = export_onnx(model, tmp_path / "fixed.onnx")
    assert not result.dynamic_size and result.max_difference < 1e-5
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 64, 64]
    scene = make_raster(height=50, width=100)  # 50 px rows: padded to the graph's 64 px
    a = segment(scene, tmp_path / "torch", model=model, **QUIET)
    b = segment(scene, tmp_path / "onnx", model=str(result.path), **QUIET)
    assert (read_classes(a.classes_path) == read_classes(b.classes_path)).mean() >= 0.999


def test_export_refuses_an_onnx_model(conv_onnx, tmp_path):
    _, path = conv_onnx
    with pytest.raises(ModelError, match="ONNX model already"):
        export_onnx(load_onnx(path), tmp_path / "again.onnx")


def test_deepness_data_is_attributed():
    text = (DEEPNESS / "ATTRIBUTION.md").read_text()
    for path in DEEPNESS.iterdir():
        if path.suffix in (".onnx", ".tif"):
            assert path.name in text
    assert sum(p.stat().st_size for p in DEEPNESS.iterdir()) < 2e6  # kept small


def test_the_shipped_onnx_default_is_the_shipped_checkpoint(one_torch_thread):
    """default.onnx (the CPU path) holds the same card and network as default.pt."""
    from geoseg.model import default_onnx_path

    shipped = default_onnx_path()
    assert shipped.exists(), "export it with: geoseg export default -o " + str(shipped)
    model, onnx_model = load_model(), load_model(shipped)
    assert onnx_model.card == model.card
    torch_predictor, onnx_predictor = Predictor(model, "cpu"), Predictor(onnx_model, "cpu")
    for x in real_tiles():
        expected, got = torch_predictor.predict(x), onnx_predictor.predict(x)
        assert np.abs(got - expected).max() <= 1e-3
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999


def test_the_default_model_runs_through_onnxruntime_on_the_cpu(monkeypatch):
    import importlib.util

    from geoseg.model import load_default
    from geoseg.model.onnx_module import OnnxModule

    assert isinstance(load_default("cpu").module, OnnxModule)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    assert not isinstance(load_default("cpu").module, OnnxModule)
