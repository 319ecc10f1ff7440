"""The QGIS plugin object: registers the Processing provider, and nothing else."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication

from .provider import GeosegProvider


class GeosegPlugin:
    """Adds the geoseg provider to Processing (``initProcessing``, also run by ``initGui``)."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: GeosegProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802 - the name QGIS calls
        """Register the provider (QGIS calls this for Processing-only loads, e.g. qgis_process)."""
        if self.provider is None:
            self.provider = GeosegProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - the name QGIS calls
        """Called by QGIS when the plugin is enabled in the desktop application."""
        self.initProcessing()

    def unload(self) -> None:
        """Called by QGIS when the plugin is disabled or reloaded."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
