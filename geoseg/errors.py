"""The exception root of geoseg and its children.

Every error a user can cause derives from :class:`GeosegError`. Where a builtin exception fits,
the error also derives from it (as in rasterio's ``RasterioIOError(RasterioError, OSError)``), so
callers can catch either. Messages say what happened and what to do next.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator


class GeosegError(Exception):
    """Root of all geoseg errors; the CLI turns these into a one-line message and exit status 1."""


class InputError(GeosegError, ValueError):
    """The input scene cannot be used as given (missing, not a raster, wrong bands, ...)."""


class SceneNotFoundError(InputError, FileNotFoundError):
    """The input path does not exist."""


class NotARasterError(InputError):
    """The input exists but GDAL cannot read it as a raster."""


class MissingGeoreferenceError(InputError):
    """The raster has no CRS or no geotransform."""


class BandMismatchError(InputError):
    """The scene's bands or dtype do not match what the model expects."""


class ScaleError(InputError):
    """A band's values cannot be mapped onto the model's (all nodata, NaN or constant)."""


class ConfigError(GeosegError, ValueError):
    """A setting or configuration file is invalid; the message names the key."""


class ModelError(GeosegError):
    """A model checkpoint is missing, corrupt or incompatible."""


class OutputError(GeosegError, OSError):
    """Outputs cannot be written (exists without --overwrite, not writable, disk full)."""


class OutputExistsError(OutputError, FileExistsError):
    """The output folder or file exists and overwriting was not asked for."""


class ResumeError(GeosegError):
    """An interrupted run cannot be resumed (other inputs or settings, damaged partial files)."""


class InsufficientMemoryError(ConfigError, MemoryError):
    """The settings would need more memory than the machine has; the message gives smaller ones."""


class TrainingError(GeosegError):
    """Training data or training settings are unusable."""


class GeosegWarning(UserWarning):
    """Root of geoseg's warnings."""


class UngeoreferencedWarning(GeosegWarning):
    """The input has no georeferencing; outputs carry pixel coordinates."""


class BandOrderWarning(GeosegWarning):
    """The scene does not name its bands; geoseg assumed the model's band order."""


class AlphaBandWarning(GeosegWarning):
    """A band tagged alpha holds data (e.g. near-infrared), so it is not used as a mask."""


class ResolutionWarning(GeosegWarning):
    """The scene is read at a pixel size outside the range the model was trained at."""


class LowConfidenceWarning(GeosegWarning):
    """Far more of the scene has low confidence than the model's held-out images had."""


_recording = threading.local()  # per thread: the records of the runs being recorded


def warn(message: str, category: type[GeosegWarning], stacklevel: int = 1) -> None:
    """``warnings.warn`` for a geoseg warning; the run being recorded in this thread keeps it.

    ``stacklevel`` counts from the caller, as with :func:`warnings.warn`.
    """
    runs = getattr(_recording, "runs", None)
    if runs:
        runs[-1].append({"category": category.__name__, "message": message})
    warnings.warn(message, category, stacklevel=stacklevel + 1)


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[dict[str, str]]]:
    """The geoseg warnings raised in this thread inside the block, as ``{"category", "message"}``.

    Each is kept whether or not the warning filters show it: ``run.json`` lists them.
    """
    records: list[dict[str, str]] = []
    runs: list[list[dict[str, str]]] = _recording.__dict__.setdefault("runs", [])
    runs.append(records)
    try:
        yield records
    finally:
        runs.pop()
