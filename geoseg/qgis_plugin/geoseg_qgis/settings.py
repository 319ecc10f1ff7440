"""The plugin's one setting, the geoseg executable, among the Processing provider settings.

It shows in Settings > Options > Processing > Providers > geoseg (stored by QGIS as
``Processing/Configuration/GEOSEG_EXECUTABLE``). Empty: the path ``geoseg qgis install``
recorded, else ``geoseg`` on PATH.
"""

from __future__ import annotations

from typing import Any

from . import runner

try:  # QGIS's own Processing plugin, present wherever Processing is
    from processing.core.ProcessingConfig import ProcessingConfig, Setting
except ImportError:  # pragma: no cover - Processing switched off
    ProcessingConfig = Setting = None


def register(group: str, icon: Any) -> None:
    """Add the setting to the provider's page of the Processing options and read its value."""
    if ProcessingConfig is None:
        return
    ProcessingConfig.settingIcons[group] = icon
    ProcessingConfig.addSetting(
        Setting(
            group,
            runner.SETTING,
            f"{runner.SETTING_LABEL} (empty: the one `geoseg qgis install` recorded, else PATH)",
            "",
            valuetype=Setting.FILE,
        )
    )
    ProcessingConfig.readSettings()


def unregister() -> None:
    """Remove the setting from the Processing options (the stored value stays)."""
    if ProcessingConfig is not None and runner.SETTING in ProcessingConfig.settings:
        ProcessingConfig.removeSetting(runner.SETTING)


def executable_setting() -> str:
    """The configured geoseg executable, or "" where none is set."""
    if ProcessingConfig is None:
        return ""
    return str(ProcessingConfig.getSetting(runner.SETTING) or "").strip()
