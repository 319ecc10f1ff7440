"""The ``geoseg`` command line: argument parsing only, over the Python API.

One module per command (``run``, ``info``, ``export``, ``train``, ``evaluate``, ``vectorize``,
``qgis``), registered here on the :func:`main` group; shared options live in
:mod:`geoseg.cli.options`. Heavy modules (torch, rasterio) are imported inside the commands so
``geoseg --help`` is instant. Every :class:`~geoseg.errors.GeosegError` becomes a one-line message
and exit status 1 (:func:`~geoseg.cli.errors.handle_errors`, which every command wears).
"""

from __future__ import annotations

import click

from geoseg.cli import evaluate, export, info, qgis, run, train, vectorize
from geoseg.cli.errors import handle_errors
from geoseg.cli.evaluate import parse_merges
from geoseg.cli.options import parse_bands, tta_option
from geoseg.cli.scenes import SAMPLE_SCENE, expand_scenes, sample_scene_path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoseg")
def main() -> None:
    r"""geoseg: land-cover maps from satellite and aerial scenes.

    \b
    geoseg run --sample          segment the shipped sample scene with the default model
    geoseg run scene.tif         write scene_geoseg/ next to the scene
    geoseg info MODEL_OR_SCENE   print a model card or a scene summary
    """


main.add_command(run.run)
main.add_command(info.info)
main.add_command(export.export)
main.add_command(train.train)
main.add_command(evaluate.evaluate)
main.add_command(vectorize.vectorize)
main.add_command(qgis.qgis_group)

__all__ = [
    "SAMPLE_SCENE",
    "expand_scenes",
    "handle_errors",
    "main",
    "parse_bands",
    "parse_merges",
    "sample_scene_path",
    "tta_option",
]
