"""Import-only stand-ins for packages the GPU pack leaves out to stay under the call's 64 MiB.

torchgeo's ``trainers`` package (which :mod:`geoseg.training.task` builds on) imports every
torchgeo dataset and model on import, and with them ``pyproj`` (5.4 MB of compressed wheel) and,
through kornia, ``kornia_rs`` (3.4 MB). The training phase uses neither: it reads folder
datasets through rasterio and never transforms a CRS. :func:`import_only` lets such an import
succeed while ``geoseg.training`` is imported, then takes the stand-ins out of ``sys.modules``
again, so that any later ``import pyproj`` fails as it would without the package.

A stand-in answers attribute access and calls (torchgeo evaluates ``CRS.from_epsg(4326)`` and
``CRS | None`` annotations at class definition) with more stand-in classes; using one as a value
(truth, numbers, iteration, indexing) raises :class:`PlaceholderUsed`, which names the package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: The packages the pack leaves out although torchgeo imports them, and why that is safe.
LEFT_OUT: dict[str, str] = {
    "pyproj": "imported by torchgeo's datasets; the benchmark transforms no CRS",
    "kornia_rs": "imported by kornia.io (image files); torchgeo's trainers use kornia.augmentation",
}


class PlaceholderUsed(ModuleNotFoundError):
    """A stand-in of a package the GPU pack leaves out was used for real."""


class _AbsentMeta(type):
    """The type of stand-in classes: attributes and calls give stand-ins, values raise."""

    _package: str

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return stand_in(cls._package, f"{cls.__qualname__}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return stand_in(cls._package, f"{cls.__qualname__}()")

    def _refuse(cls, *args: Any, **kwargs: Any) -> Any:
        raise PlaceholderUsed(
            f"{cls.__qualname__} belongs to {cls._package!r}, which the GPU pack leaves out "
            f"({LEFT_OUT.get(cls._package, 'import-only')}); carry the package to use it"
        )

    __bool__ = __int__ = __float__ = __iter__ = __len__ = _refuse
    __add__ = __sub__ = __mul__ = __truediv__ = __lt__ = __gt__ = __getitem__ = _refuse


def stand_in(package: str, name: str) -> Any:
    """A new stand-in class called ``name`` for something of ``package``."""
    return _AbsentMeta(name, (), {"_package": package, "__module__": package})


class _StandInModule(types.ModuleType):
    """A module of a left-out package: every attribute is a stand-in."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return stand_in(self.__name__.partition(".")[0], f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves stand-in modules for ``packages`` and their submodules, before any real finder."""

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = tuple(packages)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.partition(".")[0] not in self.packages:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def missing(packages: Sequence[str]) -> list[str]:
    """Those of ``packages`` that cannot be imported here (the ones a stand-in must serve)."""
    import importlib.util

    return [p for p in packages if importlib.util.find_spec(p) is None]


@contextmanager
def import_only(packages: Sequence[str]) -> Iterator[list[str]]:
    """Stand-ins for those of ``packages`` that are not installed, for the imports in the block.

    Yields the names served by stand-ins. Afterwards they leave ``sys.modules``: modules
    imported in the block keep the stand-ins they bound, later imports fail as usual.
    """
    served = missing(packages)
    finder = _Finder(served)
    if served:
        sys.meta_path.insert(0, finder)
    try:
        yield served
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m.partition(".")[0] in served]:
            del sys.modules[name]
