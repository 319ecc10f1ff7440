"""geoseg: land-cover segmentation of satellite and aerial scenes.

The public API is imported lazily so that ``import geoseg`` (and ``geoseg --help``) stays fast:
torch is loaded only when a model is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geoseg.errors import GeosegError

__version__ = "0.1.0"

__all__ = [
    "ClassTable",
    "GeosegError",
    "ModelCard",
    "RunConfig",
    "SegmentResult",
    "SegmentationModel",
    "export_onnx",
    "load_config",
    "load_model",
    "segment",
    "segment_array",
    "segment_distributed",
    "segment_many",
    "__version__",
]

_LAZY = {
    "segment": "geoseg.pipeline",
    "segment_array": "geoseg.arrays",
    "segment_distributed": "geoseg.distributed",
    "segment_many": "geoseg.distributed",
    "SegmentResult": "geoseg.pipeline",
    "load_model": "geoseg.model",
    "ModelCard": "geoseg.model",
    "SegmentationModel": "geoseg.model",
    "export_onnx": "geoseg.model.onnx_export",
    "ClassTable": "geoseg.types",
    "RunConfig": "geoseg.config",
    "load_config": "geoseg.config",
}

if TYPE_CHECKING:
    from geoseg.arrays import segment_array
    from geoseg.config import RunConfig, load_config
    from geoseg.distributed import segment_distributed, segment_many
    from geoseg.model import ModelCard, SegmentationModel, load_model
    from geoseg.model.onnx_export import export_onnx
    from geoseg.pipeline import SegmentResult, segment
    from geoseg.types import ClassTable


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
