r"""Installing the QGIS plugin: into a QGIS user profile, or as a zip for "Install from ZIP".

The plugin (``geoseg/qgis_plugin/geoseg_qgis/``) ships inside the package as data: QGIS's own
Python never imports geoseg. It runs the geoseg command of the environment that installed it,
whose path this module records in ``geoseg_install.json`` inside the copied plugin.

Where QGIS keeps its profiles (as QGIS resolves it, ``QgsUserProfileManager``): the folder
``QGIS_CUSTOM_CONFIG_PATH`` names (or ``--profiles-path``) plus ``profiles/``, else the
application data folder: ``~/.local/share/QGIS/QGIS3`` (``$XDG_DATA_HOME`` when set) on Linux,
``~/Library/Application Support/QGIS/QGIS3`` on macOS, ``%APPDATA%\QGIS\QGIS3`` on Windows.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from geoseg.errors import OutputError, OutputExistsError

PLUGIN_NAME = "geoseg_qgis"
#: written into the installed plugin; the plugin reads the executable from it
INSTALL_RECORD = "geoseg_install.json"
_SKIPPED = ("__pycache__", "*.pyc", "*.pyo", INSTALL_RECORD)


@dataclass(frozen=True)
class InstallResult:
    """Where the plugin went and which geoseg it will run."""

    plugin_dir: Path
    executable: Path
    enabled: bool  # whether the profile's QGIS3.ini now loads it at startup

    def summary(self) -> str:
        """Lines for the terminal: what was done and what to do in QGIS."""
        lines = [
            f"installed the geoseg QGIS plugin into {self.plugin_dir}",
            f"it runs {self.executable}",
        ]
        if self.enabled:
            lines.append("restart QGIS: the tools are in the Processing Toolbox under geoseg")
        else:
            lines.append("restart QGIS and enable 'geoseg' in Plugins > Manage and Install Plugins")
        return "\n".join(lines)


def plugin_source() -> Path:
    """The plugin folder shipped inside the package."""
    return Path(str(resources.files("geoseg") / "qgis_plugin" / PLUGIN_NAME))


def profiles_root(
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
    home: Path | None = None,
) -> Path:
    """The folder holding QGIS's user profiles (``<root>/<profile>/python/plugins``)."""
    env = os.environ if environ is None else environ
    custom = env.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles"
    platform = platform or sys.platform
    home = home or Path.home()
    if platform.startswith("win"):
        appdata = env.get("APPDATA")
        base = Path(appdata) if appdata else home / "AppData" / "Roaming"
    elif platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        xdg = env.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg else home / ".local" / "share"
    return base / "QGIS" / "QGIS3" / "profiles"


def plugins_folder(profile: str = "default", root: Path | None = None) -> Path:
    """The Python plugin folder of a profile."""
    return (root or profiles_root()) / profile / "python" / "plugins"


def current_executable() -> Path:
    """The ``geoseg`` command of the running environment (the one to record for QGIS)."""
    name = "geoseg.exe" if os.name == "nt" else "geoseg"
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = []
    if argv0 is not None and argv0.stem == "geoseg":
        candidates.append(argv0.absolute())
    candidates.append(Path(sysconfig.get_path("scripts")) / name)
    found = shutil.which("geoseg")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise OutputError(
        f"cannot find the geoseg command of this Python environment ({sys.executable}); "
        "reinstall geoseg here (pip install -e .) so that its geoseg script exists"
    )


def install_plugin(
    profile: str = "default",
    *,
    root: Path | None = None,
    executable: Path | None = None,
    enable: bool = True,
) -> InstallResult:
    """Copy the plugin into a QGIS profile and record which geoseg it runs.

    Args:
        profile: QGIS user profile name (``default`` is created if QGIS never ran).
        root: the profiles folder (default: :func:`profiles_root`).
        executable: the geoseg command to record (default: :func:`current_executable`).
        enable: also switch the plugin on in the profile's ``QGIS/QGIS3.ini``.
    """
    root = root or profiles_root()
    profile_dir = root / profile
    if not profile_dir.is_dir() and profile != "default":
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise OutputError(
            f"QGIS profile {profile!r} does not exist in {root} (profiles there: "
            f"{', '.join(found) or 'none'}); create it in QGIS (Settings > User Profiles > "
            "New Profile) or pass another --profile"
        )
    executable = executable or current_executable()
    target = plugins_folder(profile, root) / PLUGIN_NAME
    try:
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        shutil.copytree(plugin_source(), target, ignore=shutil.ignore_patterns(*_SKIPPED))
        (target / INSTALL_RECORD).write_text(_record(executable), encoding="utf-8")
        if enable:
            enable_plugin(profile_dir / "QGIS" / "QGIS3.ini")
    except OSError as exc:
        raise OutputError(
            f"cannot install the QGIS plugin into {target}: {exc.strerror or exc}; check that "
            "the profile folder is writable, or pass --profile"
        ) from exc
    return InstallResult(plugin_dir=target, executable=executable, enabled=enable)


def write_zip(out_path: Path, *, executable: Path | None = None, overwrite: bool = False) -> Path:
    """Write the plugin as a zip for QGIS's "Install from ZIP" (one top folder, ``geoseg_qgis/``).

    The zip records ``executable`` (default: this environment's geoseg); on a machine where that
    path does not exist the plugin looks for geoseg on PATH and in its settings.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".zip":
        raise OutputError(f"{out_path} does not end in .zip; pass -o NAME.zip")
    if out_path.exists() and not overwrite:
        raise OutputExistsError(f"{out_path} exists; pass --overwrite to replace it")
    if not out_path.parent.is_dir():
        raise OutputError(
            f"cannot write {out_path}: folder {out_path.parent} does not exist; create it first"
        )
    record = _record(executable or current_executable())
    source = plugin_source()
    partial = out_path.with_name(f".{out_path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(source.rglob("*")):
                relative = path.relative_to(source)
                if path.is_file() and _shipped(relative):
                    zf.write(path, f"{PLUGIN_NAME}/{relative.as_posix()}")
            zf.writestr(f"{PLUGIN_NAME}/{INSTALL_RECORD}", record)
        partial.replace(out_path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    return out_path


def enable_plugin(ini_path: Path) -> None:
    """Set ``[PythonPlugins] geoseg_qgis=true`` in a QGIS settings file, leaving the rest as is.

    A line edit, not configparser: QGIS's INI (Qt's format) has keys and escapes that a rewrite
    by configparser would change.
    """
    key = f"{PLUGIN_NAME}=true"
    lines = ini_path.read_text(encoding="utf-8").splitlines() if ini_path.is_file() else []
    section = next((i for i, line in enumerate(lines) if line.strip() == "[PythonPlugins]"), None)
    if section is None:
        lines += ([""] if lines and lines[-1].strip() else []) + ["[PythonPlugins]", key]
    else:
        end = next(
            (i for i in range(section + 1, len(lines)) if lines[i].startswith("[")), len(lines)
        )
        mine = [i for i in range(section + 1, end) if lines[i].startswith(f"{PLUGIN_NAME}=")]
        if mine:
            lines[mine[0]] = key
        else:
            lines.insert(section + 1, key)
    ini_path.parent.mkdir(parents=True, exist_ok=True)
    ini_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _shipped(relative: Path) -> bool:
    """Whether a file of the plugin folder belongs in the zip (no caches, no install record)."""
    return (
        "__pycache__" not in relative.parts
        and relative.suffix not in (".pyc", ".pyo")
        and (relative.name != INSTALL_RECORD)
    )


def _record(executable: Path) -> str:
    from geoseg import __version__

    return json.dumps(
        {"executable": str(executable), "geoseg_version": __version__, "python": sys.executable},
        indent=2,
    )
