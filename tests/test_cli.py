import subprocess
import sys

import pytest
from click.testing import CliRunner

from geoseg.cli import main, parse_bands
from geoseg.model import default_model_path


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
