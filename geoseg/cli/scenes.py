"""``geoseg run``'s SCENES arguments as paths: globs, ``@list.txt`` files and the shipped sample."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

SAMPLE_SCENE = "naip_rgbn_2016.tif"


def sample_scene_path() -> Path:
    """The small real scene shipped inside the package."""
    from importlib import resources

    return Path(str(resources.files("geoseg") / "data" / "sample" / SAMPLE_SCENE))


def expand_scenes(args: Sequence[str]) -> list[str]:
    """Scene arguments to paths: globs are expanded, ``@list.txt`` is read (one path a line).

    Lines of a list that are blank or start with ``#`` are skipped; relative paths in a list are
    relative to the list's folder. Arguments that are neither (URLs, GDAL paths) pass unchanged.
    """
    import glob

    scenes: list[str] = []
    for arg in args:
        if arg.startswith("@"):
            scenes.extend(_read_scene_list(Path(arg[1:])))
        elif glob.has_magic(arg) and "://" not in arg and not Path(arg).exists():
            matches = sorted(glob.glob(arg))
            if not matches:
                raise click.BadParameter(f"no file matches {arg!r}", param_hint="SCENES")
            scenes.extend(matches)
        else:
            scenes.append(arg)
    if not scenes:
        raise click.BadParameter("the scene list is empty", param_hint="SCENES")
    return scenes


def _read_scene_list(listing: Path) -> list[str]:
    """The scenes of an ``@list.txt`` file; local relative paths are made relative to its folder."""
    if not listing.is_file():
        raise click.BadParameter(f"scene list {listing} does not exist", param_hint="SCENES")
    scenes: list[str] = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            is_local = "://" not in entry and not entry.startswith("/vsi")
            path = Path(entry)
            relative = is_local and not path.is_absolute()
            scenes.append(str(listing.parent / path) if relative else entry)
    return scenes
