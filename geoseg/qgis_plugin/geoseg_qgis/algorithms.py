"""The Processing algorithms ``geoseg:segment`` and ``geoseg:vectorize``: one geoseg command each.

Each runs the geoseg executable (see :func:`runner.find_executable`) as a subprocess in the
algorithm's thread, streams its output into the Processing feedback, and, back on the main
thread (``postProcessAlgorithm``), adds what it wrote to the project, styled.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from . import loading, runner, settings

PLUGIN_DIR = Path(__file__).resolve().parent
DEVICES = ["auto", "cpu", "cuda"]
CONNECTIVITIES = ["4", "8"]
MODEL_FILTER = "geoseg models (*.pt *.pth *.ckpt *.onnx);;All files (*.*)"


class _FeedbackSink(runner.Sink):
    """The runner's sink over a ``QgsProcessingFeedback``."""

    def __init__(self, feedback: Any) -> None:
        self.feedback = feedback

    def progress(self, percent: float) -> None:
        self.feedback.setProgress(percent)

    def stage(self, text: str) -> None:
        self.feedback.setProgressText(text)

    def info(self, line: str) -> None:
        self.feedback.pushInfo(line)

    def warning(self, line: str) -> None:
        self.feedback.pushWarning(line)

    def canceled(self) -> bool:
        return bool(self.feedback.isCanceled())


class GeosegAlgorithm(QgsProcessingAlgorithm):
    """What both algorithms share: finding geoseg, running it, failing with its own message."""

    command = ""  # the geoseg subcommand; its options the plugin passes: runner.OPTIONS
    #: geoseg flag -> parameter name, to say which box to tick when geoseg's message names a flag
    flag_parameters: dict[str, str] = {}

    def __init__(self) -> None:
        super().__init__()
        self._load: dict[str, Any] | None = None  # what postProcessAlgorithm adds

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def createInstance(self) -> GeosegAlgorithm:
        return type(self)()

    def run_geoseg(self, arguments: list[str], feedback: Any) -> runner.Outcome:
        """Run ``geoseg COMMAND ARGUMENTS`` with its output in ``feedback``; fail on its error."""
        try:
            path, source = runner.find_executable(settings.executable_setting(), PLUGIN_DIR)
            version = runner.check_executable(path, self.command, runner.OPTIONS[self.command])
        except runner.ExecutableError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(f"geoseg {version}: {path} ({source})")
        command = [path, self.command, *arguments]
        feedback.pushCommandInfo(_display(command))
        try:
            outcome = runner.run(command, _FeedbackSink(feedback))
        except OSError as exc:
            raise QgsProcessingException(
                f"cannot run {path}: {exc}; {runner.HOW_TO_POINT}"
            ) from exc
        if not outcome.canceled and not outcome.ok:
            raise QgsProcessingException(self._with_hints(outcome.failure()))
        return outcome

    def _with_hints(self, message: str) -> str:
        """The message of geoseg as it is, plus which parameter means a flag it names."""
        hints = [
            f"In QGIS: '{self.parameterDefinition(name).description()}' is {flag}."
            for flag, name in self.flag_parameters.items()
            if flag in message and self.parameterDefinition(name) is not None
        ]
        return "\n".join([message, *hints])

    def postProcessAlgorithm(self, context: Any, feedback: Any) -> dict[str, Any]:
        project = context.project()
        if self._load is not None and project is not None:
            loading.add_outputs(project, feedback=feedback, **self._load)
        return {}


class SegmentAlgorithm(GeosegAlgorithm):
    """``geoseg run``: a raster scene to land-cover classes, added to the project styled."""

    command = "run"
    flag_parameters = {"--overwrite": "OVERWRITE", "--resume": "RESUME"}

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:
        return "Segment raster"

    def shortHelpString(self) -> str:
        return (
            "Segments a raster scene into land-cover classes with geoseg, which runs in its own "
            "Python environment (nothing is installed into QGIS's Python).<br><br>"
            "Writes, into the output folder: <b>classes.tif</b> (class ids, with its "
            "<b>classes.qml</b> style), <b>confidence.tif</b>, <b>preview.png</b>, "
            "<b>classes.gpkg</b> (polygons: a <i>landcover</i> layer and one layer per class, "
            "styled) and <b>run.json</b>, then adds the layers to the project.<br><br>"
            "The folder appears only when the run is complete. Cancel keeps the work done in "
            "<i>.FOLDER.partial</i> next to it: run again with the same settings and "
            "<i>Resume an interrupted run</i> ticked to continue.<br><br>"
            "Resolution: <i>auto</i> reads the scene at the model's pixel size when its own is "
            "outside the range the model was trained at, <i>native</i> at its own, or a pixel "
            "size in metres; the outputs always keep the scene's grid.<br><br>"
            "Scale: <i>auto</i> feeds a scene of the model's data type as it is and maps others "
            "(11/12/16-bit counts, reflectance, float) onto the model's values; <i>LO,HI</i> "
            "maps that window of values, <i>pN,pM</i> those percentiles. run.json records the "
            "values used.<br><br>"
            f"geoseg is found in {runner.SETTING_WHERE}, else where <tt>geoseg qgis install</tt> "
            "recorded it, else on PATH."
        )

    def initAlgorithm(self, config: Any = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL",
                "Model: checkpoint or ONNX file (empty: the default model)",
                behavior=QgsProcessingParameterFile.File,
                optional=True,
                fileFilter=MODEL_FILTER,
            )
        )
        for name, text, minimum in (
            ("TILE_SIZE", "Tile size in pixels (empty: the model's)", 32),
            ("OVERLAP", "Tile overlap in pixels (empty: the model's)", 0),
        ):
            self.addParameter(
                QgsProcessingParameterNumber(
                    name, text, QgsProcessingParameterNumber.Integer, None, True, minimum
                )
            )
        self.addParameter(QgsProcessingParameterEnum("DEVICE", "Device", DEVICES, False, 0))
        self.addParameter(
            QgsProcessingParameterString(
                "RESOLUTION", "Resolution: auto, native, or metres per pixel", "auto"
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                "SCALE", "Scale: auto, none, LO,HI (e.g. 0,3000) or pN,pM (e.g. p2,p98)", "auto"
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "VECTORIZE", "Vectorize: also write polygons (classes.gpkg)", True
            )
        )
        for name, text, default in (
            ("OVERWRITE", "Replace an existing output folder (a geoseg result)", False),
            ("RESUME", "Resume an interrupted run into the output folder", False),
            ("LOAD", "Add the outputs to the project", True),
        ):
            param = QgsProcessingParameterBoolean(name, text, default)
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES", "Classes"))
        self.addOutput(QgsProcessingOutputRasterLayer("CONFIDENCE", "Confidence"))
        self.addOutput(QgsProcessingOutputFile("GEOPACKAGE", "Polygons (GeoPackage)"))
        self.addOutput(QgsProcessingOutputVectorLayer("LANDCOVER", "Land cover polygons"))

    def processAlgorithm(self, parameters: Any, context: Any, feedback: Any) -> dict[str, Any]:
        self._load = None
        scene = _raster_source(self, parameters, "INPUT", context)
        out = _destination(self, parameters, "OUTPUT", context)
        overwrite = self.parameterAsBoolean(parameters, "OVERWRITE", context)
        vectorize = self.parameterAsBoolean(parameters, "VECTORIZE", context)
        _prepare_output_folder(out, overwrite)
        arguments = [scene, "--out", str(out)]
        model = self.parameterAsFile(parameters, "MODEL", context)
        if model:
            arguments += ["--model", model]
        for name, flag in (("TILE_SIZE", "--tile-size"), ("OVERLAP", "--overlap")):
            if _given(parameters, name):
                arguments += [flag, str(self.parameterAsInt(parameters, name, context))]
        arguments += ["--device", DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]]
        resolution = self.parameterAsString(parameters, "RESOLUTION", context).strip()
        arguments += ["--resolution", resolution or "auto"]
        scale = self.parameterAsString(parameters, "SCALE", context).strip()
        arguments += ["--scale", scale or "auto"]
        if not vectorize:
            arguments.append("--no-vector")
        if overwrite:
            arguments.append("--overwrite")
        if self.parameterAsBoolean(parameters, "RESUME", context):
            arguments.append("--resume")
        outcome = self.run_geoseg(arguments, feedback)
        if outcome.canceled:
            raise QgsProcessingException(_canceled_message(out, self, "RESUME"))
        feedback.setProgress(100)
        gpkg = out / "classes.gpkg"
        if self.parameterAsBoolean(parameters, "LOAD", context):
            self._load = {"folder": out, "title": f"geoseg: {Path(scene).stem}"}
        return {
            "OUTPUT": str(out),
            "CLASSES": str(out / "classes.tif"),
            "CONFIDENCE": str(out / "confidence.tif"),
            "GEOPACKAGE": str(gpkg) if vectorize else None,
            "LANDCOVER": f"{gpkg}|layername=landcover" if vectorize else None,
        }


class VectorizeAlgorithm(GeosegAlgorithm):
    """``geoseg vectorize``: a class raster to a styled GeoPackage, added to the project."""

    command = "vectorize"

    def name(self) -> str:
        return "vectorize"

    def displayName(self) -> str:
        return "Vectorize class raster"

    def shortHelpString(self) -> str:
        return (
            "Turns a class raster (such as geoseg's classes.tif) into a GeoPackage of polygons: a "
            "<i>landcover</i> layer (class_id, class_name, area_m2, perimeter_m) and one layer "
            "per class, each with its QGIS style, then adds them to the project.<br><br>"
            "Class names and colours come from the raster (its class_names tag and colour "
            "table) or from a classes YAML file. Minimum area (m²) merges smaller regions into "
            "their largest neighbour; simplify (metres) simplifies shared borders once, so the "
            "polygons keep no gaps and no overlaps."
        )

    def initAlgorithm(self, config: Any = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.addParameter(
            QgsProcessingParameterFile(
                "CLASSES",
                "Classes YAML (empty: the raster's names and colours)",
                behavior=QgsProcessingParameterFile.File,
                optional=True,
                fileFilter="YAML (*.yaml *.yml);;All files (*.*)",
            )
        )
        double = QgsProcessingParameterNumber.Double
        self.addParameter(
            QgsProcessingParameterNumber("MIN_AREA", "Minimum area (m²)", double, 0.0, False, 0)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "SIMPLIFY", "Simplify tolerance (metres)", double, 0.0, False, 0
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean("SMOOTH", "Smooth the pixel staircase", False)
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                "CONNECTIVITY", "Pixel connectivity", CONNECTIVITIES, False, 0
            )
        )
        load = QgsProcessingParameterBoolean("LOAD", "Add the outputs to the project", True)
        load.setFlags(load.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(load)
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "GeoPackage", "GeoPackage (*.gpkg *.GPKG)"
            )
        )
        self.addOutput(QgsProcessingOutputVectorLayer("LANDCOVER", "Land cover polygons"))

    def processAlgorithm(self, parameters: Any, context: Any, feedback: Any) -> dict[str, Any]:
        self._load = None
        raster = _raster_source(self, parameters, "INPUT", context)
        out = _destination(self, parameters, "OUTPUT", context)
        arguments = [raster, "--out", str(out)]
        classes = self.parameterAsFile(parameters, "CLASSES", context)
        if classes:
            arguments += ["--classes", classes]
        for name, flag in (("MIN_AREA", "--min-area"), ("SIMPLIFY", "--simplify")):
            arguments += [flag, repr(self.parameterAsDouble(parameters, name, context))]
        if self.parameterAsBoolean(parameters, "SMOOTH", context):
            arguments.append("--smooth")
        connectivity = CONNECTIVITIES[self.parameterAsEnum(parameters, "CONNECTIVITY", context)]
        arguments += ["--connectivity", connectivity]
        if out.exists():  # chosen in a save dialog that asked before replacing it, as QGIS does
            arguments.append("--overwrite")
        outcome = self.run_geoseg(arguments, feedback)
        if outcome.canceled:
            raise QgsProcessingException(
                f"Canceled: geoseg stopped; {out} was not written (it is written under a "
                "temporary name and renamed when complete)."
            )
        feedback.setProgress(100)
        if self.parameterAsBoolean(parameters, "LOAD", context):
            self._load = {"gpkg": out, "title": f"geoseg: {out.stem}"}
        return {"OUTPUT": str(out), "LANDCOVER": f"{out}|layername=landcover"}


def _raster_source(alg: Any, parameters: Any, name: str, context: Any) -> str:
    """The file (or GDAL path) of a raster parameter: what the geoseg command line reads."""
    layer = alg.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"the input raster ({name}) cannot be loaded")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{layer.name()} is a {layer.providerType()} layer; geoseg reads files that GDAL "
            "opens: save it as a GeoTIFF first (Export > Save As...)"
        )
    return str(layer.source())


def _destination(alg: Any, parameters: Any, name: str, context: Any) -> Path:
    """A destination parameter's path; a temporary one where none was given (processing.run)."""
    path = alg.parameterAsFileOutput(parameters, name, context)
    return Path(path or alg.parameterDefinition(name).generateTemporaryDestination())


def _prepare_output_folder(out: Path, overwrite: bool) -> None:
    """Make ``out`` writable for geoseg, which creates it itself, complete, at the end.

    An empty folder (QGIS's folder widget or its temporary outputs may have made it) is
    removed; replacing a folder that is not a geoseg result is refused.
    """
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif overwrite and out.exists() and not (out / "run.json").is_file():
        raise QgsProcessingException(
            f"{out} is not a geoseg output folder (it has no run.json), so it is not replaced; "
            "choose a new or empty output folder"
        )


def _canceled_message(out: Path, alg: Any, resume: str) -> str:
    partial = out.with_name(f".{out.name}.partial")
    if not partial.exists():
        return f"Canceled: geoseg stopped before writing anything for {out}."
    tick = alg.parameterDefinition(resume).description()
    return (
        f"Canceled: geoseg stopped. Its work so far is kept in {partial} (no {out.name} folder "
        f"was written); run again with the same settings and output folder and '{tick}' "
        "ticked to continue."
    )


def _given(parameters: Any, name: str) -> bool:
    """Whether an optional parameter has a value (not missing, None, NULL or empty)."""
    value = parameters.get(name)
    if value is None or value == "":
        return False
    is_null = getattr(value, "isNull", None)
    return not (callable(is_null) and is_null())


def _display(command: list[str]) -> str:
    """The command as one would type it in a terminal."""
    if os.name == "nt":
        return subprocess.list2cmdline(command)
    return " ".join(shlex.quote(part) for part in command)
