"""The Processing provider ``geoseg``: its algorithms and its setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import settings
from .algorithms import SegmentAlgorithm, VectorizeAlgorithm

ICON = Path(__file__).resolve().parent / "icon.svg"


class GeosegProvider(QgsProcessingProvider):
    """geoseg's algorithms in the Processing toolbox (``geoseg:segment``, ``geoseg:vectorize``)."""

    def id(self) -> str:
        return "geoseg"

    def name(self) -> str:
        return "geoseg"

    def longName(self) -> str:
        return "geoseg land-cover segmentation"

    def icon(self) -> Any:
        return QIcon(str(ICON))

    def load(self) -> bool:
        settings.register(self.name(), self.icon())
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        settings.unregister()

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(SegmentAlgorithm())
        self.addAlgorithm(VectorizeAlgorithm())
