"""The bad-input table: every case is a one-line ``geoseg: error: ...`` naming problem and fix.

Each runs the real CLI (click's runner): exit status 1, no traceback, no output folder and no
partial folder left behind. The inputs that are not errors (all nodata, NaN, rotated grids, no
georeferencing with ``--allow-ungeoreferenced``) are checked to succeed as documented.
"""

import errno
import os
import re
import subprocess

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import Affine, from_origin

from geoseg.cli import main
from geoseg.engine.journal import partial_dir
from geoseg.engine.memory import check_memory, estimate_memory, format_bytes
from geoseg.errors import InsufficientMemoryError
from geoseg.io.write import RasterWriter
from tests.conftest import small_smp_checkpoint, smooth_field, write_raster

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "uint8": small_smp_checkpoint(root / "rgb.pt"),
        "float32": small_smp_checkpoint(root / "float.pt", dtype="float32"),
    }


def scene(path, height=64, width=80, count=3, dtype="uint8", **kw):
    return write_raster(path, smooth_field(count, height, width, dtype, seed=height), **kw)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, out, *fragments):
    """Exit 1, a single ``geoseg: error:`` line (the last), no traceback, nothing written."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), "an exception escaped the CLI"
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("geoseg: error: ")]
    assert errors == lines[-1:], result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    if out is not None:
        assert not out.exists(), "an output folder was left"
        assert not partial_dir(out).exists(), "a partial folder was left"
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return errors[0]


def truncated_tiff(tmp):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 256, 256), dtype=np.uint8)  # noise: deflate cannot shrink it
    path = write_raster(tmp / "whole.tif", data, tiled=True)
    blob = path.read_bytes()
    damaged = tmp / "truncated.tif"
    damaged.write_bytes(blob[: len(blob) // 2])
    with rasterio.open(damaged) as ds:  # the header is intact: GDAL fails only mid-read
        assert ds.shape == (256, 256)
    return damaged


def corrupt_checkpoint(tmp, good):
    path = tmp / "corrupt.pt"
    path.write_bytes(b"\x00not a checkpoint" * 64)
    return path


def truncated_checkpoint(tmp, good):
    path = tmp / "truncated.pt"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def incompatible_checkpoint(tmp, good):
    payload = torch.load(good, weights_only=True)
    payload["card"]["arch_kwargs"] = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
    path = tmp / "incompatible.pt"
    torch.save(payload, path)
    return path


def newer_checkpoint(tmp, good):
    payload = torch.load(good, weights_only=True)
    payload["version"] = 99
    path = tmp / "newer.pt"
    torch.save(payload, path)
    return path


def list_checkpoint(tmp, good):
    path = tmp / "list.pt"
    torch.save([1, 2, 3], path)
    return path


def config_file(text):
    def make(tmp):
        path = tmp / "settings.yaml"
        path.write_text(text)
        return path

    return make


# (id, scene factory, extra CLI arguments, fragments the message must contain)
INPUT_CASES = [
    ("missing", lambda t: t / "nope.tif", [], ["nope.tif does not exist", "check the path"]),
    ("directory", lambda t: t, [], ["is a directory", "pass a raster file"]),
    ("not-a-raster", lambda t: _text(t / "notes.tif"), [],
     ["cannot be read as a raster", "pass a GeoTIFF"]),
    ("zero-bytes", lambda t: _text(t / "empty.tif", ""), [],
     ["is empty (0 bytes)", "download it again"]),
    ("truncated", truncated_tiff, [], ["truncated or corrupt", "export it again"]),
    ("one-pixel", lambda t: scene(t / "dot.tif", 1, 1), [],
     ["1 x 1 pixels", "at least 2 x 2", "export a larger area"]),
    ("no-crs", lambda t: scene(t / "nocrs.tif", crs=None), [],
     ["has no CRS", "--allow-ungeoreferenced"]),
    ("band-count", lambda t: scene(t / "two.tif", count=2), [],
     ["expects 3 band(s)", "has 2", "--bands"]),
    ("band-missing", lambda t: scene(t / "rgb.tif"), ["--bands", "1,2,7"],
     ["band(s) [7] do not exist", "bands 1..3"]),
    ("constant-band", lambda t: _flat_band(t / "flat.tif", 2, 1200.0), [],
     ["band 2 (band_2) of", "flat.tif is constant", "--scale LO,HI", "--bands"]),
    ("nan-band", lambda t: _flat_band(t / "nan.tif", 3, np.nan, "float32"), [],
     ["band 3 (band_3) of", "holds no valid pixel", "all nodata or NaN", "--scale LO,HI"]),
    ("nodata-band", lambda t: _flat_band(t / "nd.tif", 1, 0.0, nodata=0), [],
     ["band 1 (gray) of", "all nodata or NaN", "--scale LO,HI"]),
    ("bad-scale", lambda t: scene(t / "u16.tif", dtype="uint16"), ["--scale", "3000,0"],
     ["scale must be auto, none, LO,HI", "pN,pM", "'3000,0'"]),
    ("scale-pairs", lambda t: scene(t / "u16.tif", dtype="uint16"), ["--scale", "0,1,0,2"],
     ["--scale 0.0,1.0,0.0,2.0 gives 2 LO,HI pairs", "takes 3 band(s)"]),
    ("unsupported-dtype", lambda t: scene(t / "c.tif", dtype="complex64"), [],
     ["data type complex64", "gdal_translate -ot"]),
    ("overlap-vs-tile", lambda t: scene(t / "rgb.tif"), ["--tile-size", "64", "--overlap", "64"],
     ["overlap (64)", "half the tile size (64)", "--overlap"]),
    ("huge-tile", lambda t: _sparse(t / "huge.tif", 40_000), ["--tile-size", "40000"],
     ["need about", "TB of memory", "is available", "use --tile-size"]),
]  # fmt: skip

MODEL_CASES = [
    ("missing-model", lambda t, g: t / "none.pt", ["none.pt does not exist", "--model"]),
    ("corrupt-model", corrupt_checkpoint, ["cannot read model checkpoint", "corrupt"]),
    ("truncated-model", truncated_checkpoint, ["cannot read model checkpoint", "corrupt"]),
    ("incompatible-model", incompatible_checkpoint, ["do not fit the architecture"]),
    ("newer-model", newer_checkpoint, ["version 99", "Upgrade geoseg"]),
    ("not-a-model", list_checkpoint, ["is not a model checkpoint"]),
]

CONFIG_CASES = [
    ("unknown-key", "tiling:\n  tile: 64\n", ["unknown key(s) ['tile']", "in section 'tiling'"]),
    ("wrong-type", "inference:\n  batch_size: eight\n",
     ["inference.batch_size: expected an integer", "'eight'"]),
    ("not-yaml", "tiling: [unclosed\n", ["is not valid YAML"]),
    ("bad-value", "inference:\n  device: tpu\n", ["inference.device must be one of"]),
]  # fmt: skip


def _text(path, text="just some notes\n"):
    path.write_text(text)
    return path


def _flat_band(path, band, value, dtype="uint16", **kw):
    """A scene of another dtype than the model's whose ``band`` holds ``value`` everywhere."""
    data = smooth_field(3, 64, 80, dtype, seed=1)
    data[band - 1] = value
    return write_raster(path, data, **kw)


def _sparse(path, size):
    """A huge raster that costs nothing on disk (blocks never written)."""
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(5e5, 5.3e6, 10, 10), tiled=True, SPARSE_OK=True,
    ) as ds:  # fmt: skip
        ds.write(np.full((3, 16, 16), 7, np.uint8), window=rasterio.windows.Window(0, 0, 16, 16))
    return path


@pytest.mark.parametrize(("make", "extra", "fragments"), [c[1:] for c in INPUT_CASES],
                         ids=[c[0] for c in INPUT_CASES])  # fmt: skip
def test_bad_inputs(tmp_path, checkpoints, make, extra, fragments):
    source = make(tmp_path)
    out = tmp_path / "result"
    result = cli("run", source, "-m", checkpoints["uint8"], "-o", out, "-q", "--no-vector", *extra)
    assert_clean_error(result, out, *fragments)


@pytest.mark.parametrize(("make", "fragments"), [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])  # fmt: skip
def test_bad_models(tmp_path, checkpoints, make, fragments):
    model = make(tmp_path, checkpoints["uint8"])
    out = tmp_path / "result"
    result = cli("run", scene(tmp_path / "rgb.tif"), "-m", model, "-o", out, "-q")
    assert_clean_error(result, out, *fragments)


@pytest.mark.parametrize(("text", "fragments"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])  # fmt: skip
def test_bad_configs(tmp_path, checkpoints, text, fragments):
    config = config_file(text)(tmp_path)
    out = tmp_path / "result"
    rgb = scene(tmp_path / "rgb.tif")
    result = cli("run", rgb, "-m", checkpoints["uint8"], "-o", out, "--config", config, "-q")
    assert_clean_error(result, out, "settings.yaml", *fragments)


def test_existing_output_is_not_overwritten(tmp_path, checkpoints):
    out = tmp_path / "result"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    rgb = scene(tmp_path / "rgb.tif")
    result = cli("run", rgb, "-m", checkpoints["uint8"], "-o", out, "-q")
    assert_clean_error(result, None, "exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "earlier work"


def test_output_parent_missing(tmp_path, checkpoints):
    out = tmp_path / "no" / "such" / "result"
    result = cli("run", scene(tmp_path / "rgb.tif"), "-m", checkpoints["uint8"], "-o", out)
    assert_clean_error(result, None, "folder", "does not exist")


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write to: by permissions, or (as root) a read-only tmpfs."""
    target = tmp_path / "locked"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o500)
        yield target
        target.chmod(0o700)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs here")
    yield target
    subprocess.run(["umount", str(target)], check=True)


def test_output_folder_not_writable(tmp_path, checkpoints, read_only_dir):
    out = read_only_dir / "result"
    result = cli("run", scene(tmp_path / "rgb.tif"), "-m", checkpoints["uint8"], "-o", out)
    assert_clean_error(result, out, "is not writable", "pass -o")


def test_disk_full_while_writing_keeps_earlier_outputs(tmp_path, checkpoints, monkeypatch):
    """A writer failing with ENOSPC mid-run: temporary files go, the previous output stays."""
    rgb = scene(tmp_path / "rgb.tif", height=200, width=60)
    out = tmp_path / "result"
    args = ["run", rgb, "-m", checkpoints["uint8"], "-o", out, "-q", "--no-vector"]
    assert cli(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write = RasterWriter.write
    calls = [0]

    def failing_write(self, row_off, data):
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        write(self, row_off, data)

    monkeypatch.setattr(RasterWriter, "write", failing_write)
    small_blocks = config_file("output: {block_size: 16}")(tmp_path)
    result = cli(*args, "--overwrite", "--config", small_blocks)
    message = assert_clean_error(result, None, "No space left on device", "free some space")
    assert "result" in message
    assert calls[0] > 3, "the failure happened mid-run"
    assert not partial_dir(out).exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 96 kB tmpfs (needs root); skipped where mounting is not allowed."""
    target = tmp_path / "small"
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(target)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield target
    subprocess.run(["umount", str(target)], check=True)


def test_disk_really_full(tmp_path, checkpoints, tiny_tmpfs):
    """Outputs of a scene far larger than the free space: a clean error, the disk left as it was."""
    earlier = tiny_tmpfs / "earlier_geoseg"
    earlier.mkdir()
    (earlier / "classes.tif").write_bytes(b"x" * 1000)
    noise = np.random.default_rng(1).integers(0, 255, (3, 600, 600), dtype=np.uint8)
    big = write_raster(tmp_path / "noise.tif", noise)
    out = tiny_tmpfs / "result"
    small_blocks = config_file("output: {block_size: 16}")(tmp_path)
    args = ["-o", out, "-q", "--no-vector", "--tile-size", 128, "--config", small_blocks]
    result = cli("run", big, "-m", checkpoints["uint8"], *args)
    assert_clean_error(result, out, "small", "is full", "free some space")
    assert (earlier / "classes.tif").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["earlier_geoseg"]


# --- inputs that are not errors


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs


def test_all_nodata_scene_succeeds_and_says_so(tmp_path, checkpoints):
    blank = scene(tmp_path / "blank.tif", nodata=0)
    with rasterio.open(blank, "r+") as ds:
        ds.write(np.zeros((3, 64, 80), np.uint8))
    out = tmp_path / "result"
    result = cli("run", blank, "-m", checkpoints["uint8"], "-o", out)
    assert result.exit_code == 0, result.output
    assert "every tile is nodata; outputs hold nodata only" in result.output
    classes, _, _ = read(out / "classes.tif")
    assert (classes == 255).all()
    layers = [name for name, kind in pyogrio.list_layers(out / "classes.gpkg") if kind]
    assert layers and all(pyogrio.read_info(out / "classes.gpkg", layer=n)["features"] == 0
                          for n in layers)  # fmt: skip


def test_nan_and_inf_are_nodata(tmp_path, checkpoints):
    data = smooth_field(3, 64, 80, "float32", seed=2) * 4 - 2
    data[:, 10:20, 30:50] = np.nan
    data[1, 40, 5] = np.inf
    data[2, 50:52, 60] = -np.inf
    path = write_raster(tmp_path / "float.tif", data)
    out = tmp_path / "result"
    result = cli("run", path, "-m", checkpoints["float32"], "-o", out, "--no-vector", "-q")
    assert result.exit_code == 0, result.output
    classes, _, _ = read(out / "classes.tif")
    invalid = ~np.all(np.isfinite(data), axis=0)
    assert (classes[invalid] == 255).all()
    assert (classes[~invalid] != 255).all()


def test_rotated_geotransform_is_kept(tmp_path, checkpoints):
    rotated = from_origin(500_000, 5_300_000, 10, 10) * Affine.rotation(20) * Affine.shear(5, 0)
    path = scene(tmp_path / "rotated.tif", transform=rotated)
    out = tmp_path / "result"
    result = cli("run", path, "-m", checkpoints["uint8"], "-o", out, "--no-vector", "-q")
    assert result.exit_code == 0, result.output
    classes, transform, crs = read(out / "classes.tif")
    assert transform.almost_equals(rotated) and crs == "EPSG:32633"
    assert classes.shape == (64, 80) and (classes != 255).all()


def test_ungeoreferenced_allowed_with_flag(tmp_path, checkpoints):
    path = scene(tmp_path / "plain.tif", crs=None, transform=Affine.identity())
    out = tmp_path / "result"
    args = ["run", path, "-m", checkpoints["uint8"], "-o", out, "--no-vector", "-q"]
    result = cli(*args, "--allow-ungeoreferenced")
    assert result.exit_code == 0, result.output
    assert "geoseg: warning:" in result.output and "pixel coordinates" in result.output
    classes, transform, crs = read(out / "classes.tif")
    assert crs is None and transform == Affine.identity() and classes.shape == (64, 80)


# --- the memory estimate behind the huge-tile refusal


MEMORY = {"bands": 4, "classes": 6, "scene_width": 60_000, "block_size": 512, "multiple": 32}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_memory_refusal_suggests_settings_that_fit(device):
    free = 3 * 10**9
    # on CUDA the host has plenty: the GPU's memory is what the suggestion must respect
    limits = {"host_available": free if device == "cpu" else 10**12, "device_available": free}
    with pytest.raises(InsufficientMemoryError) as refused:
        check_memory(tile_height=4096, tile_width=4096, batch_size=16, device=device,
                     **MEMORY, **limits)  # fmt: skip
    message = str(refused.value)
    assert "GPU memory" in message if device == "cuda" else " of memory (" in message
    tile, batch = map(int, re.search(r"--tile-size (\d+) --batch-size (\d+)", message).groups())
    assert tile % 32 == 0 and tile & (tile - 1) == 0 and tile < 4096 and 1 <= batch <= 16
    check_memory(tile_height=tile, tile_width=tile, batch_size=batch, device=device,
                 **MEMORY, **limits)  # fmt: skip


def test_memory_estimate_grows_with_every_setting():
    base = {"tile_height": 512, "tile_width": 512, "bands": 4, "classes": 6, "batch_size": 8,
            "scene_width": 10_000, "block_size": 512}  # fmt: skip
    total = estimate_memory(**base).total
    for key in ("tile_height", "bands", "classes", "batch_size", "scene_width"):
        assert estimate_memory(**{**base, key: base[key] * 2}).total > total, key
    # a default U-Net run (512 px tiles, batch 8) needs a few GB: the machines it targets
    assert 1e9 < total < 8e9
    assert format_bytes(total).endswith("GB")


def _warn_coarse_and_plain():
    import warnings

    from geoseg.errors import ResolutionWarning, warn

    warn("coarse", ResolutionWarning)
    warnings.warn("plain", UserWarning, stacklevel=1)


def test_recorded_warnings_keeps_this_threads_geoseg_warnings_whatever_the_filters():
    import threading
    import warnings

    from geoseg.errors import ResolutionWarning, recorded_warnings

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")  # Python's own: once per line, then silent
        with recorded_warnings() as outer:
            _warn_coarse_and_plain()
            with recorded_warnings() as inner:  # a run inside a run keeps its own
                _warn_coarse_and_plain()
                other = threading.Thread(target=_warn_coarse_and_plain)  # not this run's
                other.start()
                other.join()
        warnings.simplefilter("ignore", ResolutionWarning)
        with recorded_warnings() as ignored:
            _warn_coarse_and_plain()
    coarse = {"category": "ResolutionWarning", "message": "coarse"}
    assert outer == [coarse] and inner == [coarse] and ignored == [coarse]
    # shown once per line until the filters change (the "ignore" resets Python's memory)
    assert [w.category for w in shown] == [ResolutionWarning, UserWarning, UserWarning]
    assert shown[0].filename == __file__  # the warning points at warn's caller
    _warn_coarse_and_plain()  # outside any recorded block: nothing kept, nothing fails
