import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from geoseg.cli import main, parse_bands
from geoseg.model import default_model_path
from tests.conftest import small_smp_checkpoint


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_help_does_not_import_torch():
    code = (
        "import sys, geoseg.cli; "
        "assert 'torch' not in sys.modules and 'rasterio' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    result = invoke("--help")
    assert result.exit_code == 0 and "run" in result.output and "info" in result.output


def test_run_with_checkpoint(tiny_checkpoint, make_raster, tmp_path):
    scene = make_raster(height=150, width=170)
    out = tmp_path / "res"
    result = invoke(
        "run",
        scene,
        "--model",
        tiny_checkpoint,
        "-o",
        out,
        "--tile-size",
        "128",
        "--overlap",
        "32",
        "--no-vector",
        "--probabilities",
    )
    assert result.exit_code == 0, result.output
    assert "classes.tif" in result.output and "tiles:" in result.output
    assert {p.name for p in out.iterdir()} >= {
        "classes.tif",
        "confidence.tif",
        "probabilities.tif",
        "preview.png",
    }
    again = invoke("run", scene, "--model", tiny_checkpoint, "-o", out, "--no-vector", "-q")
    assert again.exit_code == 1 and "exists; pass --overwrite" in again.output
    assert "Traceback" not in again.output


def test_run_progress_prints_each_line_once(make_raster, tmp_path, monkeypatch):
    """Into a log (not a terminal) every drawing of the bar stays: none may be printed twice."""
    from geoseg.engine.inference import Predictor

    predict = Predictor.predict

    def slow_predict(self, inputs):
        time.sleep(0.15)  # longer than tqdm's 0.1 s between drawings: every count is drawn
        return predict(self, inputs)

    monkeypatch.setattr(Predictor, "predict", slow_predict)
    scene = make_raster(height=150, width=170)
    checkpoint = small_smp_checkpoint(tmp_path / "m.pt")
    result = invoke("run", scene, "-m", checkpoint, "-o", tmp_path / "out", "--tile-size", 64,
                    "--overlap", 16, "--batch-size", 4, "--no-vector", "--no-preview")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in re.split(r"[\r\n]", result.stderr) if line.strip()]
    assert any(line.startswith("geoseg: device cpu") for line in lines), lines
    drawn = [line for line in lines if re.search(r"\d+/\d+ \[", line)]
    assert len(drawn) >= 2 and all(line.endswith("]") for line in drawn), drawn  # nothing glued
    assert sum("12/12 [" in line for line in drawn) == 1, drawn  # 150 x 170 px: 3 x 4 tiles
    assert drawn[-1].startswith("100%") and len(set(drawn)) == len(drawn), drawn
    assert result.stderr.endswith("]\n"), result.stderr  # the final line ends the bar's output


def test_run_with_config_file(tiny_checkpoint, make_raster, tmp_path):
    scene = make_raster(height=100, width=100)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {tiny_checkpoint}\ntiling:\n  tile_size: 64\n  overlap: 16\n"
        "output:\n  vectorize: false\n  preview: false\n"
    )
    result = invoke("run", scene, "--config", cfg, "-o", tmp_path / "o", "-q")
    assert result.exit_code == 0, result.output
    assert (
        not (tmp_path / "o" / "preview.png").exists() and (tmp_path / "o" / "classes.tif").exists()
    )
    cfg.write_text("tiling:\n  tile_sise: 64\n")
    bad = invoke("run", scene, "--config", cfg, "-o", tmp_path / "o2")
    assert bad.exit_code == 1 and "tile_sise" in bad.output


def test_run_scale_option_reaches_run_json(tiny_checkpoint, make_raster, tmp_path):
    scene = make_raster(height=64, width=64, dtype="uint16")
    common = ["--model", tiny_checkpoint, "--no-vector", "--no-preview", "-q"]
    result = invoke("run", scene, "-o", tmp_path / "o", "--scale", "0,8000", *common)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "o" / "run.json").read_text())["settings"]
    assert settings["scale"] == "0.0,8000.0" and settings["stretch"]["rule"] == "window"
    assert settings["stretch"]["high"] == [8000.0] * 3
    shown = invoke("run", scene, "-o", tmp_path / "o2", *common[:-1])
    assert shown.exit_code == 0, shown.output
    assert "uint16 values scaled onto the model's 0-255 (matched:" in shown.output
    bad = invoke("run", scene, "-o", tmp_path / "o3", "--scale", "p2", *common)
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert bad.output.strip().startswith("geoseg: error: scale must be auto, none, LO,HI")


def test_user_errors_are_one_line(tmp_path):
    result = invoke("run", tmp_path / "missing.tif")
    assert result.exit_code == 1
    assert result.output.strip().startswith("geoseg: error:") and "Traceback" not in result.output
    assert invoke("run").exit_code == 2  # usage error: nothing to segment


def test_info_scene_and_model(tiny_checkpoint, make_raster):
    result = invoke("info", make_raster())
    assert result.exit_code == 0 and "120 x 100 px" in result.output
    result = invoke("info", tiny_checkpoint)
    assert result.exit_code == 0 and "tiny-unet" in result.output and "water" in result.output
    # what model.init needs to fine-tune it: the architecture keys
    assert "unet / encoder resnet18 (decoder_channels=[32, 16, 16, 8, 8])" in result.output


@pytest.mark.skipif(default_model_path().exists(), reason="a default model is installed")
def test_sample_without_default_model_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "--sample")
    assert result.exit_code == 1 and "no default model is installed" in result.output


def test_parse_bands():
    assert parse_bands("1, 2,3") == (1, 2, 3) and parse_bands(None) is None
    import click

    with pytest.raises(click.BadParameter):
        parse_bands("r,g,b")


def test_evaluate_scores_a_configs_held_out_images(tiny_checkpoint, make_raster, tmp_path):
    import json

    import numpy as np
    import yaml

    from tests.conftest import write_raster

    root = tmp_path / "data"
    for group in ("a", "b"):
        scene = make_raster(height=40, width=48, count=3, seed=len(group))
        (root / group).mkdir(parents=True)
        (root / group / "img_1.tif").write_bytes(scene.read_bytes())
        labels = np.zeros((1, 40, 48), dtype=np.uint8)
        labels[0, :, 24:] = 2
        write_raster(root / group / "lab_1.tif", labels)
    config = {
        "classes": [{"name": n, "color": "#000000"} for n in ("water", "land", "building")],
        "data": {
            "sources": [
                {
                    "name": "mine",
                    "source": "folders",
                    "root": str(root),
                    "images": "*/img_*.tif",
                    "masks": "*/lab_*.tif",
                    "pair_key": "_(\\d+)$",
                    "val_groups": ["b"],
                    "labels": [
                        {"value": 0, "classes": "water"},
                        {"value": 2, "classes": ["land", "building"]},
                    ],
                }
            ]
        },
    }
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = invoke(
        "evaluate", "--model", tiny_checkpoint, "--label-config", config_path,
        "--source", "mine", "--merge", "solid=land,building", "--json", tmp_path / "m.json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "coarse classes (solid = land + building)" in out.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert list(saved["groups"]) == ["mine/b"]  # held out only, one entry per group
    group = saved["groups"]["mine/b"]
    assert [Path(i["image"]).parent.name for i in group["images"]] == ["b"]
    assert group["coarse"]["merge"] == {"solid": ["land", "building"]}
    assert saved["worst_group"]["group"] == "mine/b"
    bad = invoke("evaluate", "--model", tiny_checkpoint, "--merge", "solid")
    assert bad.exit_code != 0 and "NAME=CLASS,CLASS" in bad.output
