"""The QGIS plugin (geoseg/qgis_plugin/geoseg_qgis) and ``geoseg qgis install|zip``.

Its runner (standard library only) is tested here, in the test Python, with fake geoseg
executables. The plugin itself runs in a real headless QGIS: Debian's python3-qgis belongs to the
system Python, so ``tests/qgis_plugin_driver.py`` runs there once for the module and reports
what it saw; the QGIS tests skip with a reason where PyQGIS is absent.
"""

import ast
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import geoseg
from geoseg.cli import main, sample_scene_path
from geoseg.qgis_install import (
    INSTALL_RECORD,
    PLUGIN_NAME,
    current_executable,
    enable_plugin,
    plugin_source,
    profiles_root,
)
from tests.conftest import write_raster
from tests.vector.test_qgis import SYSTEM_PYTHON, pyqgis_available

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("qgis_plugin_driver.py")
SPEC = importlib.util.spec_from_file_location("geoseg_qgis_runner", plugin_source() / "runner.py")
runner = sys.modules[SPEC.name] = importlib.util.module_from_spec(SPEC)  # dataclasses look it up
SPEC.loader.exec_module(runner)
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


class Recorder(runner.Sink):
    def __init__(self, cancel_after_progress=False):
        self.events = []
        self.cancel_after_progress = cancel_after_progress

    def progress(self, percent):
        self.events.append(("progress", percent))

    def stage(self, text):
        self.events.append(("stage", text))

    def info(self, line):
        self.events.append(("info", line))

    def warning(self, line):
        self.events.append(("warning", line))

    def canceled(self):
        return self.cancel_after_progress and any(e[0] == "progress" for e in self.events)

    def of(self, kind):
        return [text for k, text in self.events if k == kind]


def fake_geoseg(folder, body="", version="0.1.0", help_text=None, name="geoseg"):
    """An executable that answers --version and --help like geoseg, then runs ``body``."""
    help_text = help_text or " ".join(runner.OPTIONS["run"] + runner.OPTIONS["vectorize"])
    path = Path(folder) / name
    path.write_text(
        f"#!{sys.executable}\n"
        "import signal, sys, time\n"
        f"if sys.argv[1:] == ['--version']: print('geoseg, version {version}'); sys.exit(0)\n"
        f"if sys.argv[2:] == ['--help']: print({help_text!r}); sys.exit(0)\n"
        + textwrap.dedent(body)
    )
    path.chmod(0o755)
    return path


# -- the runner, without QGIS -------------------------------------------------------------------


@posix_only
def test_run_streams_progress_log_lines_and_warnings(tmp_path):
    exe = fake_geoseg(
        tmp_path,
        r"""
        err = sys.stderr
        err.write("geoseg: warning: the scene's pixels are 5 m\n")
        err.write("geoseg: model m; 934x723 px, 4 tiles of 512x512 px\n")
        for done in range(5):
            err.write(f"\r{25 * done:3d}%|\u2588\u2588   | {done}/4 [00:0{done}<00:01, 2.0tile/s]")
            err.flush()
        err.write("\n")
        err.flush()
        # stdout and stderr are separate pipes, read side by side: give the stderr lines time to
        # be handled first, so the order below is the order geoseg wrote them
        time.sleep(0.5)
        print("outputs in out:")
        """,
    )
    sink = Recorder()
    outcome = runner.run([str(exe), "run", "scene.tif"], sink)
    assert outcome.ok and outcome.error is None
    assert sink.of("progress") == [0.0, 23.75, 47.5, 71.25, 95.0]
    assert sink.of("warning") == ["geoseg: warning: the scene's pixels are 5 m"]
    assert sink.of("info") == [
        "geoseg: model m; 934x723 px, 4 tiles of 512x512 px",
        "tiles: 4/4 [00:04<00:01, 2.0tile/s]",
        "outputs in out:",
    ]
    assert sink.of("stage") == ["writing the outputs (overviews, preview, polygons)"]


@posix_only
def test_geoseg_error_line_is_the_failure_as_it_is(tmp_path):
    line = "geoseg: error: scene.tif does not exist; check the path"
    exe = fake_geoseg(tmp_path, f"sys.stderr.write({line + chr(10)!r}); sys.exit(1)\n")
    outcome = runner.run([str(exe), "run", "scene.tif"], Recorder())
    assert not outcome.ok and outcome.failure() == line
    crash = fake_geoseg(tmp_path, "raise RuntimeError('a bug')\n", name="crash")
    outcome = runner.run([str(crash)], Recorder())
    assert outcome.failure().startswith("geoseg exited with status 1:\nTraceback")
    assert outcome.failure().endswith("RuntimeError: a bug")


INTERRUPTIBLE = """
try:
    for done in range(600):
        sys.stderr.write(f"\\r {done}/600 [00:00<00:10, 9tile/s]"); sys.stderr.flush()
        time.sleep(0.05)
except KeyboardInterrupt:
    sys.stderr.write("\\ngeoseg: interrupted; resume with: geoseg run x --resume\\n")
    sys.exit(130)
"""


@posix_only
def test_cancel_interrupts_geoseg_like_ctrl_c(tmp_path):
    exe = fake_geoseg(tmp_path, INTERRUPTIBLE)
    sink = Recorder(cancel_after_progress=True)
    started = time.perf_counter()
    outcome = runner.run([str(exe), "run", "x"], sink)
    assert outcome.canceled and not outcome.ok and outcome.returncode == 130
    assert time.perf_counter() - started < 5
    assert "geoseg: interrupted; resume with: geoseg run x --resume" in sink.of("info")
    assert "stopping geoseg" in sink.of("stage")


@posix_only
def test_cancel_terminates_a_geoseg_that_ignores_the_interrupt(tmp_path):
    exe = fake_geoseg(tmp_path, "signal.signal(signal.SIGINT, signal.SIG_IGN)\n" + INTERRUPTIBLE)
    outcome = runner.run([str(exe), "run", "x"], Recorder(cancel_after_progress=True), grace_s=0.5)
    assert outcome.canceled and outcome.returncode == -signal.SIGTERM


def test_find_executable_order_and_how_to_point_at_one(tmp_path, monkeypatch):
    on_path = tmp_path / "bin"
    on_path.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(runner.ExecutableError) as missing:
        runner.find_executable("", tmp_path)
    for needed in ("not found", "geoseg qgis install", runner.SETTING, "Processing > Providers"):
        assert needed in str(missing.value)
    with pytest.raises(runner.ExecutableError, match="GEOSEG_EXECUTABLE.*does not exist"):
        runner.find_executable(str(tmp_path / "gone"), tmp_path)
    fake = fake_geoseg(on_path)
    monkeypatch.setenv("PATH", str(on_path))
    assert runner.find_executable("", tmp_path) == (str(fake), "found on PATH")
    recorded = fake_geoseg(tmp_path, name="recorded")
    (tmp_path / INSTALL_RECORD).write_text(json.dumps({"executable": str(recorded)}))
    assert runner.find_executable("", tmp_path)[0] == str(recorded)
    assert runner.find_executable(str(fake), tmp_path)[0] == str(fake)  # the setting wins


@posix_only
def test_check_executable_refuses_other_programs_and_old_geoseg(tmp_path):
    hello = tmp_path / "hello"
    hello.write_text("#!/bin/sh\necho hello\n")
    hello.chmod(0o755)
    with pytest.raises(runner.ExecutableError, match="is not a geoseg executable"):
        runner.check_executable(str(hello), "run", runner.OPTIONS["run"])
    old = fake_geoseg(tmp_path, version="0.0.9", name="old")
    with pytest.raises(runner.ExecutableError, match=r"needs geoseg 0\.1\.0 or newer"):
        runner.check_executable(str(old), "run", runner.OPTIONS["run"])
    no_resolution = fake_geoseg(tmp_path, help_text="--out --model", name="older")
    with pytest.raises(runner.ExecutableError, match="too old.*has no --tile-size"):
        runner.check_executable(str(no_resolution), "run", runner.OPTIONS["run"])


@pytest.mark.parametrize("command", ["run", "vectorize"])
def test_this_geoseg_has_every_option_the_plugin_passes(command):
    version = runner.check_executable(str(current_executable()), command, runner.OPTIONS[command])
    assert tuple(map(int, version.split("."))) >= runner.MIN_VERSION


def test_child_environment_leaves_qgis_python_and_gdal_behind(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/qgis/apps/Python39")
    monkeypatch.setenv("PROJ_LIB", "/qgis/share/proj")
    monkeypatch.setenv("GEOSEG_TEST_KEEP", "1")
    env = runner.child_environment()
    assert "PYTHONHOME" not in env and "PROJ_LIB" not in env
    assert env["GEOSEG_TEST_KEEP"] == "1" and env["PYTHONIOENCODING"] == "utf-8"


def test_plugin_imports_only_qgis_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"qgis", "processing", "__future__"}
    for path in plugin_source().glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            assert {n.split(".")[0] for n in names} <= allowed, (path.name, names)


def test_package_data_ships_the_whole_plugin():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["geoseg"]
    assert f"qgis_plugin/{PLUGIN_NAME}/*" in patterns
    folders = [p for p in plugin_source().iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert folders == []  # the pattern is not recursive
    metadata = (plugin_source() / "metadata.txt").read_text().splitlines()
    assert {"qgisMinimumVersion=3.22", "hasProcessingProvider=yes"} <= set(metadata)
    assert f"version={geoseg.__version__}" in metadata  # the plugin is released with geoseg


# -- geoseg qgis install | zip ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({"QGIS_CUSTOM_CONFIG_PATH": "/custom"}, "linux", "/custom/profiles"),
        ({}, "linux", "/home/u/.local/share/QGIS/QGIS3/profiles"),
        ({"XDG_DATA_HOME": "/xdg"}, "linux", "/xdg/QGIS/QGIS3/profiles"),
        ({}, "darwin", "/home/u/Library/Application Support/QGIS/QGIS3/profiles"),
        ({"APPDATA": "/appdata"}, "win32", "/appdata/QGIS/QGIS3/profiles"),
    ],
)
def test_profiles_root_as_qgis_resolves_it(environ, platform, expected):
    assert profiles_root(environ, platform, Path("/home/u")) == Path(expected)


def test_qgis_install_copies_the_plugin_and_records_this_geoseg(tmp_path):
    env = {"QGIS_CUSTOM_CONFIG_PATH": str(tmp_path)}
    ini = tmp_path / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[General]\nx=%40Variant(1)\n\n[PythonPlugins]\nother=true\ngeoseg_qgis=false\n")
    target = tmp_path / "profiles" / "default" / "python" / "plugins" / PLUGIN_NAME
    target.mkdir(parents=True)
    (target / "stale.py").write_text("")
    result = CliRunner().invoke(main, ["qgis", "install"], env=env)
    assert result.exit_code == 0, result.output
    assert str(target) in result.output and "Processing Toolbox" in result.output
    shipped = {p.name for p in plugin_source().iterdir() if p.is_file()}
    assert {p.name for p in target.iterdir()} == shipped | {INSTALL_RECORD}
    for name in shipped:
        assert (target / name).read_bytes() == (plugin_source() / name).read_bytes()
    record = json.loads((target / INSTALL_RECORD).read_text())
    assert record["executable"] == str(current_executable())
    assert Path(record["executable"]).is_file()
    assert ini.read_text().splitlines() == [
        "[General]", "x=%40Variant(1)", "", "[PythonPlugins]", "other=true", "geoseg_qgis=true",
    ]  # fmt: skip
    missing = CliRunner().invoke(main, ["qgis", "install", "--profile", "work"], env=env)
    assert missing.exit_code == 1
    assert "profile 'work' does not exist" in missing.output and "profiles there: default" in (
        missing.output
    )


def test_enable_plugin_adds_the_section_to_a_new_settings_file(tmp_path):
    ini = tmp_path / "QGIS" / "QGIS3.ini"
    enable_plugin(ini)
    assert ini.read_text() == "[PythonPlugins]\ngeoseg_qgis=true\n"


def test_qgis_zip_is_what_install_from_zip_expects(tmp_path):
    out = tmp_path / "geoseg_qgis.zip"
    result = CliRunner().invoke(main, ["qgis", "zip", "-o", str(out)])
    assert result.exit_code == 0, result.output
    names = zipfile.ZipFile(out).namelist()
    shipped = {p.name for p in plugin_source().iterdir() if p.is_file()}
    assert sorted(names) == sorted(f"{PLUGIN_NAME}/{n}" for n in shipped | {INSTALL_RECORD})
    again = CliRunner().invoke(main, ["qgis", "zip", "-o", str(out)])
    assert again.exit_code == 1 and "exists; pass --overwrite" in again.output
    assert CliRunner().invoke(main, ["qgis", "zip", "-o", str(out), "--overwrite"]).exit_code == 0


# -- the plugin in a real, headless QGIS --------------------------------------------------------

NO_QGIS = "PyQGIS (Debian python3-qgis) not importable"
needs_qgis = [pytest.mark.qgis, pytest.mark.skipif(not pyqgis_available(), reason=NO_QGIS)]


@pytest.fixture(scope="module")
def qgis_report(tmp_path_factory):
    """Install with ``geoseg qgis install``, then drive the plugin in QGIS (about 40 s)."""
    tmp = tmp_path_factory.mktemp("qgis_plugin")
    config = tmp / "qgis_config"
    installed = CliRunner().invoke(
        main, ["qgis", "install"], env={"QGIS_CUSTOM_CONFIG_PATH": str(config)}
    )
    assert installed.exit_code == 0, installed.output
    plugin_zip = tmp / "geoseg_qgis.zip"
    assert CliRunner().invoke(main, ["qgis", "zip", "-o", str(plugin_zip)]).exit_code == 0
    bad = write_raster(tmp / "two_bands.tif", np.full((2, 40, 50), 7, np.uint8))
    # a copy: QGIS writes statistics next to a raster it opens (.aux.xml), not into the package
    scene = Path(shutil.copy(sample_scene_path(), tmp / "naip_rgbn_2016.tif"))
    work, report = tmp / "work", tmp / "report.json"
    work.mkdir()
    args = [scene, bad, plugin_zip, work, report]
    done = subprocess.run(
        [SYSTEM_PYTHON, str(DRIVER), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(config)},
        timeout=600,
    )
    assert done.returncode == 0 and report.is_file(), done.stdout + done.stderr
    data = json.loads(report.read_text())
    data["config"], data["work"] = config, work
    return data


def step(report, name):
    found = report[name]
    assert "traceback" not in found, found.get("traceback")
    return found


def logged(found, kind):
    return [text for k, text in found["log"] if k == kind]


def qgis_test(fn):
    for mark in needs_qgis:
        fn = mark(fn)
    return fn


@qgis_test
def test_provider_registers_with_its_algorithms(qgis_report):
    found = step(qgis_report, "provider")
    assert found["loaded"] and found["setting_registered"]
    assert found["algorithms"] == ["geoseg:segment", "geoseg:vectorize"]
    assert found["qgisMinimumVersion"] == "3.22" and found["hasProcessingProvider"] == "yes"
    # QGIS's own profile folder is where `geoseg qgis install` put the plugin
    profile = qgis_report["config"] / "profiles" / "default"
    assert Path(found["settings_dir"]) == profile
    assert Path(found["module"]) == profile / "python" / "plugins" / PLUGIN_NAME / "__init__.py"
    for name in ("INPUT", "MODEL", "TILE_SIZE", "OVERLAP", "DEVICE", "RESOLUTION", "SCALE",
                 "VECTORIZE"):  # fmt: skip
        assert name in found["segment_parameters"]
    assert qgis_report["heavy_modules"] == []  # no torch, rasterio or geoseg inside QGIS


@qgis_test
def test_segment_writes_the_outputs_and_adds_styled_layers(qgis_report):
    found = step(qgis_report, "segment")
    assert found["failed"] is None, found["log"]
    out = qgis_report["work"] / "sample_result"
    assert found["results"]["OUTPUT"] == str(out)
    assert found["results"]["CLASSES"] == str(out / "classes.tif")
    expected_files = {"classes.tif", "classes.qml", "confidence.tif", "preview.png", "run.json"}
    assert set(found["files"]) >= expected_files | {"classes.gpkg"}
    command = logged(found, "command")[0]
    assert command.startswith(str(current_executable()) + " run ")
    assert "--resolution native" in command and "--device cpu" in command
    assert "--scale auto" in command
    assert any("recorded by `geoseg qgis install`" in line for line in logged(found, "info"))
    assert any(line.startswith("tiles: 4/4 [") for line in logged(found, "info"))
    assert found["progress"][-2:] == [95.0, 100.0]

    classes = [
        [c["id"], c["name"], "#{:02x}{:02x}{:02x}".format(*c["color"])]
        for c in found["run_json"]["model"]["classes"]
    ]
    layers = {layer["name"]: layer for layer in found["layers"].values()}
    assert set(layers) == {"landcover", "classes", "confidence"} | {c[1] for c in classes}
    assert all(layer["valid"] for layer in layers.values())
    assert layers["classes"]["renderer"] == "paletted" and layers["classes"]["classes"] == classes
    assert layers["landcover"]["renderer"] == "categorizedSymbol"
    assert layers["landcover"]["field"] == "class_id" and layers["landcover"]["classes"] == classes
    assert layers["landcover"]["features"] > 0
    for _, name, colour in classes:
        assert layers[name]["renderer"] == "singleSymbol" and layers[name]["color"] == colour
    assert sum(layers[c[1]]["features"] for c in classes) == layers["landcover"]["features"]

    (group,) = found["tree"]
    assert group["name"] == "geoseg: naip_rgbn_2016" and group["visible"]
    tree = [(node["name"], node["visible"]) for node in group["children"]]
    assert tree == [
        ("landcover", True),
        ("layers by class", False),
        ("classes", True),
        ("confidence", False),
    ]
    assert [node["name"] for node in group["children"][1]["children"]] == [c[1] for c in classes]


@qgis_test
def test_cancel_leaves_no_complete_looking_folder_and_resume_finishes(qgis_report):
    found = step(qgis_report, "cancel")
    assert found["failed"].startswith("Canceled: geoseg stopped.")
    assert "Resume an interrupted run" in found["failed"]
    assert not found["out_exists"] and found["layers"] == {}
    assert "journal.jsonl" in found["partial_files"]
    assert any(line.startswith("geoseg: interrupted;") for line in logged(found, "info"))
    assert found["cancel_seconds"] < 60
    resumed = found["resumed"]
    assert resumed["failed"] is None, resumed["log"]
    assert "--resume" in logged(resumed, "command")[0]
    assert any(line.startswith("geoseg: resuming ") for line in logged(resumed, "info"))
    assert {"classes.tif", "run.json", "classes.gpkg"} <= set(resumed["files"])
    assert not resumed["partial_exists"]


@qgis_test
def test_bad_input_fails_with_geoseg_message_in_the_log(qgis_report):
    found = step(qgis_report, "bad_input")
    assert found["ok"] is False and not found["out_exists"] and found["layers"] == {}
    errors = logged(found, "error")
    assert any(
        line.startswith("geoseg: error: the model expects 3 band(s) (red, green, blue) but ")
        and "two_bands.tif has 2" in line
        for line in errors
    ), found["log"]


@qgis_test
def test_existing_output_folder_names_the_box_to_tick(qgis_report):
    found = step(qgis_report, "exists")
    assert "exists; pass --overwrite to replace it" in found["failed"]
    assert "'Replace an existing output folder (a geoseg result)' is --overwrite" in found["failed"]


@qgis_test
def test_missing_executable_says_how_to_point_the_plugin_at_one(qgis_report):
    found = step(qgis_report, "missing_executable")
    for needed in ("no-such-geoseg", "does not exist", "geoseg qgis install", "GEOSEG_EXECUTABLE"):
        assert needed in found["failed"]


@qgis_test
def test_vectorize_algorithm_adds_the_styled_geopackage(qgis_report):
    found = step(qgis_report, "vectorize")
    assert found["failed"] is None and found["exists"], found["log"]
    assert "--min-area 500.0" in logged(found, "command")[0]
    layers = {layer["name"]: layer for layer in found["layers"].values()}
    assert layers["landcover"]["renderer"] == "categorizedSymbol" and len(layers) == 7
    assert all(layer["valid"] for layer in layers.values())
    assert found["tree"][0]["name"] == "geoseg: again"


@qgis_test
def test_zip_passes_qgis_plugin_installer_checks(qgis_report):
    found = step(qgis_report, "zip")
    assert found["folder"] == PLUGIN_NAME and found["name"] == "geoseg"
    assert found["error"] == "" and found["version_installed"] == "0.1.0"
