"""Drives the installed geoseg QGIS plugin in a headless QGIS; run by tests/test_qgis_plugin.py.

Runs under the system Python that has PyQGIS (Debian python3-qgis), never the test venv:
``/usr/bin/python3 tests/qgis_plugin_driver.py SCENE BAD_SCENE ZIP WORK REPORT.json`` with
``QGIS_CUSTOM_CONFIG_PATH`` pointing at the folder ``geoseg qgis install`` installed into. Each
step's findings (or its traceback) go into the JSON report; the tests assert on them.
"""

import json
import os
import sys
import time
import traceback
import zipfile
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject

QgsApplication.setPrefixPath("/usr", True)
APP = QgsApplication([], False)
APP.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")
sys.path.append("/usr/share/qgis/python")

import processing  # noqa: E402
import qgis.utils  # noqa: E402
from processing.core.Processing import Processing  # noqa: E402
from processing.core.ProcessingConfig import ProcessingConfig  # noqa: E402

Processing.initialize()
SCENE, BAD_SCENE, ZIP, WORK, REPORT = sys.argv[1:6]
REPORT_DATA = {}


class Recorder(QgsProcessingFeedback):
    """Keeps what an algorithm reports; cancels once a log line contains ``cancel_on``."""

    def __init__(self, cancel_on=None):
        super().__init__()
        self.log = []
        self.progress = []
        self.cancel_on = cancel_on
        self.progressChanged.connect(self.progress.append)

    def _keep(self, kind, text):
        self.log.append([kind, text])
        if self.cancel_on and self.cancel_on in text and not self.isCanceled():
            self.cancel()

    def pushInfo(self, info):
        self._keep("info", info)

    def pushWarning(self, warning):
        self._keep("warning", warning)

    def pushCommandInfo(self, info):
        self._keep("command", info)

    def reportError(self, error, fatalError=False):
        self._keep("error", error)


def step(name):
    def wrap(fn):
        started = time.perf_counter()
        try:
            REPORT_DATA[name] = fn()
        except Exception:
            REPORT_DATA[name] = {"traceback": traceback.format_exc()}
        REPORT_DATA[name]["seconds"] = round(time.perf_counter() - started, 1)
        return fn

    return wrap


def run(alg_id, params, feedback):
    try:
        results = processing.run(alg_id, params, feedback=feedback)
        failed = None
    except Exception as exc:  # processing.run raises after the algorithm reported its error
        results, failed = None, str(exc)
    return {
        "results": {k: str(v) for k, v in (results or {}).items()},
        "failed": failed,
        "log": feedback.log,
        "progress": [round(p, 1) for p in feedback.progress],
    }


def describe_tree(node):
    children = []
    for child in node.children():
        entry = {"name": child.name(), "visible": child.itemVisibilityChecked()}
        if hasattr(child, "layer"):
            entry["layer"] = child.layer().id() if child.layer() else None
        else:
            entry["children"] = describe_tree(child)
        children.append(entry)
    return children


def describe_layers():
    layers = {}
    for layer in QgsProject.instance().mapLayers().values():
        renderer = layer.renderer()
        entry = {
            "name": layer.name(),
            "valid": layer.isValid(),
            "source": layer.source(),
            "renderer": renderer.type() if renderer else None,
        }
        if entry["renderer"] == "paletted":
            entry["classes"] = [[int(c.value), c.label, c.color.name()] for c in renderer.classes()]
        elif entry["renderer"] == "categorizedSymbol":
            entry["field"] = renderer.classAttribute()
            entry["classes"] = [
                [int(c.value()), c.label(), c.symbol().color().name()]
                for c in renderer.categories()
            ]
        elif entry["renderer"] == "singleSymbol":
            entry["color"] = renderer.symbol().color().name()
        if layer.type() == layer.VectorLayer:
            entry["features"] = layer.featureCount()
        layers[layer.id()] = entry
    return layers


@step("provider")
def _provider():
    plugins = Path(QgsApplication.qgisSettingsDirPath()) / "python" / "plugins"
    qgis.utils.plugin_paths.insert(0, str(plugins))
    sys.path.insert(0, str(plugins))
    qgis.utils.updateAvailablePlugins()
    loaded = qgis.utils.loadPlugin("geoseg_qgis") and qgis.utils.startProcessingPlugin(
        "geoseg_qgis"
    )
    provider = QgsApplication.processingRegistry().providerById("geoseg")
    segment = QgsApplication.processingRegistry().algorithmById("geoseg:segment")
    return {
        "settings_dir": QgsApplication.qgisSettingsDirPath(),
        "loaded": bool(loaded),
        "module": sys.modules["geoseg_qgis"].__file__,
        "algorithms": sorted(a.id() for a in provider.algorithms()) if provider else [],
        "segment_parameters": [p.name() for p in segment.parameterDefinitions()] if segment else [],
        "qgisMinimumVersion": qgis.utils.pluginMetadata("geoseg_qgis", "qgisMinimumVersion"),
        "hasProcessingProvider": qgis.utils.pluginMetadata("geoseg_qgis", "hasProcessingProvider"),
        "setting_registered": "GEOSEG_EXECUTABLE" in ProcessingConfig.settings,
    }


@step("segment")
def _segment():
    out = Path(WORK) / "sample_result"
    params = {"INPUT": SCENE, "RESOLUTION": "native", "DEVICE": 1, "OUTPUT": str(out)}
    report = run("geoseg:segment", params, Recorder())
    report["files"] = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    report["layers"] = describe_layers()
    report["tree"] = describe_tree(QgsProject.instance().layerTreeRoot())
    report["run_json"] = json.loads((out / "run.json").read_text()) if out.is_dir() else None
    return report


@step("vectorize")
def _vectorize():
    QgsProject.instance().clear()
    raster = Path(WORK) / "sample_result" / "classes.tif"
    out = Path(WORK) / "again.gpkg"
    params = {"INPUT": str(raster), "MIN_AREA": 500.0, "OUTPUT": str(out)}
    report = run("geoseg:vectorize", params, Recorder())
    report["exists"] = out.is_file()
    report["layers"] = describe_layers()
    report["tree"] = describe_tree(QgsProject.instance().layerTreeRoot())
    return report


@step("cancel")
def _cancel():
    QgsProject.instance().clear()
    out = Path(WORK) / "canceled"
    params = {"INPUT": SCENE, "RESOLUTION": "native", "DEVICE": 1, "OUTPUT": str(out)}
    started = time.perf_counter()
    report = run("geoseg:segment", params, Recorder(cancel_on="geoseg: device"))
    report["cancel_seconds"] = round(time.perf_counter() - started, 1)
    report["out_exists"] = out.exists()
    partial = out.with_name(f".{out.name}.partial")
    report["partial_files"] = sorted(p.name for p in partial.iterdir()) if partial.is_dir() else []
    report["layers"] = describe_layers()
    resumed = run("geoseg:segment", {**params, "RESUME": True, "LOAD": False}, Recorder())
    resumed["files"] = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    resumed["partial_exists"] = partial.exists()
    report["resumed"] = resumed
    return report


@step("bad_input")
def _bad_input():
    """As the dialog runs it (its task catches the algorithm's exception into the log)."""
    QgsProject.instance().clear()
    out = Path(WORK) / "bad"
    alg = QgsApplication.processingRegistry().createAlgorithmById("geoseg:segment")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = Recorder()
    results, ok = alg.run({"INPUT": BAD_SCENE, "OUTPUT": str(out)}, context, feedback)
    return {
        "ok": ok,
        "log": feedback.log,
        "out_exists": out.exists(),
        "layers": describe_layers(),
    }


@step("exists")
def _exists():
    out = Path(WORK) / "sample_result"
    params = {"INPUT": SCENE, "RESOLUTION": "native", "OUTPUT": str(out)}
    return run("geoseg:segment", params, Recorder())


@step("missing_executable")
def _missing_executable():
    setting = ProcessingConfig.settings["GEOSEG_EXECUTABLE"]
    setting.value = str(Path(WORK) / "no-such-geoseg")
    try:
        return run("geoseg:segment", {"INPUT": SCENE, "OUTPUT": str(Path(WORK) / "x")}, Recorder())
    finally:
        setting.value = ""


@step("zip")
def _zip():
    """Install from ZIP as QGIS's plugin installer does it, then its own metadata check."""
    from pyplugin_installer.installer_data import plugins

    target = Path(WORK) / "zip_plugins"
    with zipfile.ZipFile(ZIP) as zf:
        metadata = sorted(n for n in zf.namelist() if n.endswith("metadata.txt"))
        name = os.path.split(metadata[0])[0]
        zf.extractall(target)
    found = plugins.getInstalledPlugin(name, str(target / name), False)
    return {"folder": name, **{k: found[k] for k in ("name", "error", "version_installed")}}


REPORT_DATA["heavy_modules"] = sorted(
    m for m in ("torch", "rasterio", "geoseg", "pyproj", "shapely") if m in sys.modules
)
Path(REPORT).write_text(json.dumps(REPORT_DATA, indent=1))
sys.stdout.flush()
os._exit(0)  # exitQgis() with layers alive crashes some PyQGIS builds on the way out
