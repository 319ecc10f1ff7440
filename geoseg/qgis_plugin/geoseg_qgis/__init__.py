"""geoseg for QGIS: a Processing provider that runs the geoseg command line of its own environment.

QGIS's Python imports nothing but ``qgis.*`` and the standard library here: geoseg, torch and
rasterio stay in geoseg's environment, which runs as a subprocess.
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:  # noqa: N802 - the name QGIS calls
    """Create the plugin (QGIS's entry point)."""
    from .plugin import GeosegPlugin

    return GeosegPlugin(iface)
