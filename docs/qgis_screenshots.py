"""Screenshots of the geoseg QGIS plugin, made headless: its dialog and a loaded result.

Run with the Python that has PyQGIS (Debian python3-qgis), not geoseg's environment::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 docs/qgis_screenshots.py \
        --geoseg /path/to/venv/bin/geoseg

Writes docs/images/qgis_segment_dialog.png (the "Segment raster" dialog, grabbed with
QWidget.grab) and docs/images/qgis_result.png (the layer tree and the map after
``processing.run("geoseg:segment", ...)`` on the sample scene, rendered with
QgsMapRendererParallelJob). The plugin is loaded from the source tree.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtGui import QColor, QImage, QPainter

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "geoseg" / "data" / "sample" / "naip_rgbn_2016.tif"
IMAGES = ROOT / "docs" / "images"


def main() -> None:
    """Make both screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geoseg", required=True, help="the geoseg executable to run")
    parser.add_argument("--resolution", default="auto", help="as geoseg run --resolution")
    args = parser.parse_args()
    os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", tempfile.mkdtemp(prefix="geoseg-shots-"))

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], True)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    sys.path.insert(0, str(ROOT / "geoseg" / "qgis_plugin"))
    import processing
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig

    Processing.initialize()
    import geoseg_qgis

    plugin = geoseg_qgis.classFactory(None)
    plugin.initProcessing()
    ProcessingConfig.settings["GEOSEG_EXECUTABLE"].value = args.geoseg
    IMAGES.mkdir(parents=True, exist_ok=True)

    # a copy: QGIS writes statistics next to a raster it opens (.aux.xml), not into the package
    copy = Path(tempfile.mkdtemp(prefix="geoseg-shot-run-")) / SCENE.name
    shutil.copy(SCENE, copy)
    scene = QgsRasterLayer(str(copy), "naip_rgbn_2016", "gdal")
    QgsProject.instance().addMapLayer(scene)
    grab_dialog(app, IMAGES / "qgis_segment_dialog.png")

    out = copy.parent / "naip_rgbn_2016_geoseg"
    params = {"INPUT": scene, "RESOLUTION": args.resolution, "OUTPUT": str(out)}
    processing.run("geoseg:segment", params)
    render_result(app, scene, IMAGES / "qgis_result.png")
    print(f"wrote {IMAGES / 'qgis_segment_dialog.png'} and {IMAGES / 'qgis_result.png'}")
    sys.stdout.flush()
    os._exit(0)  # exitQgis() with layers alive crashes some PyQGIS builds on the way out


def grab_dialog(app: QgsApplication, path: Path) -> None:
    """The Processing dialog of geoseg:segment, as it opens from the toolbox."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    alg = QgsApplication.processingRegistry().createAlgorithmById("geoseg:segment")
    dialog = AlgorithmDialog(alg)
    dialog.resize(1060, 740)
    dialog.show()
    for _ in range(5):
        app.processEvents()
    dialog.grab().save(str(path))
    dialog.close()


def render_result(app: QgsApplication, scene: QgsRasterLayer, path: Path) -> None:
    """The layer tree (with its class legend) beside the map of the result over the scene."""
    from qgis.core import QgsLayerTreeModel
    from qgis.gui import QgsLayerTreeView

    project = QgsProject.instance()
    root = project.layerTreeRoot()
    scene_node = root.findLayer(scene.id())
    scene_node.setItemVisibilityChecked(True)
    visible = [layer for layer in root.checkedLayers() if layer.isValid()]

    view = QgsLayerTreeView()
    model = QgsLayerTreeModel(root)
    model.setFlag(QgsLayerTreeModel.AllowNodeChangeVisibility)  # the check boxes, as in QGIS
    view.setModel(model)
    view.expandAll()
    for node in root.findGroups(True):
        if node.name() == "layers by class":
            view.collapse(view.node2index(node))  # folded, as the plugin adds it
    view.resize(360, 720)
    view.show()
    for _ in range(5):
        app.processEvents()
    tree = view.grab().toImage()

    settings = QgsMapSettings()
    settings.setLayers(visible)
    settings.setDestinationCrs(scene.crs())
    settings.setExtent(scene.extent())
    settings.setOutputSize(QSize(930, 720))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    map_image = job.renderedImage()

    canvas = QImage(tree.width() + map_image.width(), 720, QImage.Format_ARGB32)
    canvas.fill(Qt.white)
    painter = QPainter(canvas)
    painter.drawImage(0, 0, tree)
    painter.drawImage(tree.width(), 0, map_image)
    painter.end()
    canvas.save(str(path))


if __name__ == "__main__":
    main()
