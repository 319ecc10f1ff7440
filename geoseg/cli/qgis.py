"""``geoseg qgis install|zip``: the QGIS plugin that runs this environment's geoseg."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.errors import handle_errors


@click.group("qgis")
def qgis_group() -> None:
    """The QGIS plugin: Processing tools that run this environment's geoseg from QGIS."""


@qgis_group.command("install")
@click.option("--profile", default="default", show_default=True, help="QGIS user profile.")
@click.option("--no-enable", is_flag=True, help="Only copy it; enable it in QGIS's plugin manager.")
@handle_errors
def qgis_install(profile: str, no_enable: bool) -> None:
    r"""Copy the plugin into a QGIS profile; it will run the geoseg of this environment.

    Profiles are where QGIS keeps them: $QGIS_CUSTOM_CONFIG_PATH/profiles when that is set, else
    ~/.local/share/QGIS/QGIS3/profiles (Linux), ~/Library/Application Support/QGIS/QGIS3/profiles
    (macOS) or %APPDATA%\QGIS\QGIS3\profiles (Windows).
    """
    from geoseg.qgis_install import install_plugin

    click.echo(install_plugin(profile, enable=not no_enable).summary())


@qgis_group.command("zip")
@click.option(
    "-o",
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=Path("geoseg_qgis.zip"),
    show_default=True,
    help="Zip file to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@handle_errors
def qgis_zip(out_path: Path, overwrite: bool) -> None:
    """Write the plugin as a zip for QGIS's Plugins > Manage and Install Plugins > Install from ZIP.

    The zip records this environment's geoseg; where that path does not exist, the plugin uses
    the geoseg executable set in its Processing settings, else geoseg on PATH.
    """
    from geoseg.qgis_install import write_zip

    click.echo(f"wrote {write_zip(out_path, overwrite=overwrite)}")
