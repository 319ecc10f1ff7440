"""Inputs from anywhere GDAL reads: HTTP range requests, VRT mosaics, file lists as one scene."""

import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from click.testing import CliRunner
from rasterio.transform import from_origin

import geoseg
from geoseg.cli import main
from geoseg.errors import InputError, NotARasterError
from geoseg.io.mosaic import build_vrt, write_vrt
from geoseg.pipeline import default_out_dir
from tests.conftest import conv_model, small_smp_checkpoint, smooth_field, write_raster

ORIGIN = (500_000.0, 5_300_000.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files of ``root`` with HTTP range requests (206 Partial Content), as S3 does."""

    root: Path
    requests: list[tuple[str, str, int]]

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        path = self.root / self.path.split("?", 1)[0].lstrip("/")
        if not path.is_file():
            self.requests.append((self.command, self.path, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end, status = 0, len(data) - 1, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match:
            status = 206
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last or end), end)
            else:  # a suffix: the last N bytes
                start = max(0, len(data) - int(last))
        self.requests.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A loopback HTTP server with range support; yields (folder served, base URL, requests)."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (RangeHandler,), {"root": root, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


def make_cog(path, height=150, width=170, seed=0):
    plain = write_raster(
        path.with_suffix(".plain.tif"), smooth_field(3, height, width, "uint8", seed)
    )
    rasterio.shutil.copy(plain, path, driver="COG", BLOCKSIZE=64, COMPRESS="DEFLATE")
    return plain


def classes_of(result):
    with rasterio.open(result.classes_path) as ds:
        return ds.read(1)


def segment(scene, out, model, **kw):
    # Runs compared here read the same pixels into the same tiles and batches on one torch thread:
    # the same arithmetic, so their classes may be compared exactly (no float32 ties to allow for).
    return geoseg.segment(scene, out, model=model, tile_size=48, overlap=12, vectorize=False, **kw)


@pytest.mark.parametrize("form", ["http", "vsicurl"])
def test_cog_over_http_range_requests(http_root, tmp_path, form):
    root, base, requests = http_root
    plain = make_cog(root / "scene.tif")
    url = f"{base}/scene.tif" if form == "http" else f"/vsicurl/{base}/scene.tif"
    model = conv_model(3, 4)
    remote = segment(url, tmp_path / "remote", model)
    local = segment(plain, tmp_path / "local", model)
    np.testing.assert_array_equal(classes_of(remote), classes_of(local))
    assert remote.preview_path is not None and remote.preview_path.exists()
    partial = [r for r in requests if r[2] == 206]
    assert partial, "GDAL read the COG through range requests"
    assert all(r[1] == "/scene.tif" for r in partial)


def test_remote_scene_default_output_is_in_the_current_folder(http_root, tmp_path, monkeypatch):
    root, base, _ = http_root
    make_cog(root / "field.tif")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    url = f"{base}/field.tif?token=abc"
    assert default_out_dir(url) == work / "field_geoseg"
    assert default_out_dir("s3://bucket/dir/scene.tif") == work / "scene_geoseg"
    checkpoint = small_smp_checkpoint(tmp_path / "m.pt")
    result = CliRunner().invoke(
        main, ["run", f"{base}/field.tif", "-m", str(checkpoint), "--no-vector", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert (work / "field_geoseg" / "classes.tif").exists()


def test_missing_remote_scene_is_a_clean_error(http_root, tmp_path):
    _, base, _ = http_root
    with pytest.raises(NotARasterError, match="cannot be read as a raster"):
        segment(f"{base}/absent.tif", tmp_path / "out", conv_model(3, 4))
    assert not (tmp_path / "out").exists()


# --- mosaics


def split(scene_data, tmp_path, cuts_y=(70,), cuts_x=(50, 110), nodata=None, skip=()):
    """Write the pieces of a (C, H, W) array as GeoTIFFs on one grid; ``skip`` leaves gaps."""
    _, height, width = scene_data.shape
    ys, xs = [0, *cuts_y, height], [0, *cuts_x, width]
    paths = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            if (i, j) in skip:
                continue
            piece = scene_data[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            transform = from_origin(ORIGIN[0] + xs[j] * 10, ORIGIN[1] - ys[i] * 10, 10, 10)
            path = tmp_path / f"piece_{i}_{j}.tif"
            paths.append(write_raster(path, piece, transform=transform, nodata=nodata))
    return paths


@pytest.mark.parametrize("nodata", [None, 0])
def test_list_of_files_equals_the_whole_scene(tmp_path, nodata):
    data = smooth_field(3, 150, 170, "uint8", seed=4)
    if nodata is not None:
        data[:, 100:120, 20:60] = nodata
    whole = write_raster(tmp_path / "whole.tif", data, transform=from_origin(*ORIGIN, 10, 10),
                         nodata=nodata)  # fmt: skip
    pieces = split(data, tmp_path, nodata=nodata)
    model = conv_model(3, 4)
    expected = classes_of(segment(whole, tmp_path / "whole_out", model))
    result = segment(pieces[::-1], tmp_path / "mosaic_out", model)  # any order
    np.testing.assert_array_equal(classes_of(result), expected)
    assert result.scene == str(tmp_path / "mosaic_out" / "mosaic.vrt")
    with rasterio.open(result.scene) as ds:  # the mosaic is kept with the outputs
        assert ds.shape == (150, 170)


def test_gaps_between_files_are_nodata(tmp_path):
    data = smooth_field(3, 150, 170, "uint8", seed=5)
    pieces = split(data, tmp_path, skip={(1, 1)})  # no file covers rows 70.., cols 50..110
    gap = np.zeros((150, 170), bool)
    gap[70:, 50:110] = True
    masked = write_raster(tmp_path / "masked.tif", data, transform=from_origin(*ORIGIN, 10, 10),
                          mask=~gap)  # fmt: skip
    model = conv_model(3, 4)
    classes = classes_of(segment(pieces, tmp_path / "out", model))
    assert (classes[gap] == 255).all() and (classes[~gap] != 255).all()
    np.testing.assert_array_equal(classes, classes_of(segment(masked, tmp_path / "ref", model)))


def test_vrt_file_is_a_scene(tmp_path):
    data = smooth_field(3, 150, 170, "uint8", seed=6)
    pieces = split(data, tmp_path)
    xml, _ = build_vrt([str(p) for p in pieces])
    vrt = write_vrt(xml, tmp_path / "mosaic.vrt")
    model = conv_model(3, 4)
    whole = write_raster(tmp_path / "whole.tif", data, transform=from_origin(*ORIGIN, 10, 10))
    expected = classes_of(segment(whole, tmp_path / "whole_out", model))
    np.testing.assert_array_equal(classes_of(segment(vrt, tmp_path / "vrt_out", model)), expected)
    if shutil.which("gdalbuildvrt"):
        other = tmp_path / "gdal.vrt"
        subprocess.run(["gdalbuildvrt", "-q", str(other), *map(str, pieces)], check=True)
        result = segment(other, tmp_path / "gdal_out", model)
        np.testing.assert_array_equal(classes_of(result), expected)


def test_cli_mosaic_from_arguments_and_from_a_list(tmp_path):
    data = smooth_field(3, 150, 170, "uint8", seed=7)
    pieces = split(data, tmp_path)
    listing = tmp_path / "pieces.txt"
    listing.write_text("# the six pieces\n" + "\n".join(p.name for p in pieces) + "\n")
    checkpoint = small_smp_checkpoint(tmp_path / "m.pt")
    common = ["-m", str(checkpoint), "--no-vector", "--no-preview", "-q", "--mosaic"]
    by_args = CliRunner().invoke(
        main, ["run", *map(str, pieces), "-o", str(tmp_path / "a"), *common]
    )
    assert by_args.exit_code == 0, by_args.output
    by_list = CliRunner().invoke(main, ["run", f"@{listing}", "-o", str(tmp_path / "b"), *common])
    assert by_list.exit_code == 0, by_list.output
    first = rasterio.open(tmp_path / "a" / "classes.tif").read(1)
    np.testing.assert_array_equal(first, rasterio.open(tmp_path / "b" / "classes.tif").read(1))
    assert first.shape == (150, 170)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"count": 2}, "band count 3 vs 2"),
        ({"crs": "EPSG:32632"}, "CRS"),
        ({"dtype": "uint16"}, "data type uint8 vs uint16"),
        ({"res": 20}, "pixel size"),
        ({"shift": 3}, "not on the pixel grid"),
    ],
)
def test_mismatched_files_are_refused(tmp_path, change, fragment):
    first = write_raster(tmp_path / "a.tif", smooth_field(3, 30, 30, "uint8"),
                         transform=from_origin(*ORIGIN, 10, 10))  # fmt: skip
    res = change.get("res", 10)
    x0 = ORIGIN[0] + 300 + change.get("shift", 0)
    second = write_raster(
        tmp_path / "b.tif",
        smooth_field(change.get("count", 3), 30, 30, change.get("dtype", "uint8")),
        crs=change.get("crs", "EPSG:32633"),
        transform=from_origin(x0, ORIGIN[1], res, res),
    )
    with pytest.raises(InputError, match=re.escape(fragment)):
        segment([first, second], tmp_path / "out", conv_model(3, 4))
    assert not (tmp_path / "out").exists()


def test_mosaic_members_fail_like_scenes(tmp_path):
    first = write_raster(tmp_path / "a.tif", smooth_field(3, 30, 30, "uint8"))
    with pytest.raises(InputError, match="missing.tif does not exist"):
        segment([first, tmp_path / "missing.tif"], tmp_path / "out", conv_model(3, 4))
    with pytest.raises(InputError, match="no files"):
        segment([], tmp_path / "out", conv_model(3, 4))
