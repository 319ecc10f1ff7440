"""Models: networks, their cards, checkpoints and ONNX graphs (everything that runs a forward pass).

- :mod:`~geoseg.model.card`: :class:`ModelCard`, the metadata a checkpoint carries.
- :mod:`~geoseg.model.build`: networks by architecture name; :class:`SegmentationModel`.
- :mod:`~geoseg.model.checkpoint`: saving and loading checkpoints, the shipped default model.
- :mod:`~geoseg.model.nets`: torch-only re-implementation of smp's U-Net (fast start-up), on
  :mod:`~geoseg.model.efficientnet_lite`, timm's EfficientNet-Lite encoder in plain torch.
- :mod:`~geoseg.model.device`: the torch device a run asks for.
- :mod:`~geoseg.model.onnx`, :mod:`~geoseg.model.onnx_export`, :mod:`~geoseg.model.onnx_module`:
  ONNX graphs: running them (onnxruntime), exporting them (Deepness metadata).
"""

from geoseg.model.build import (
    SegmentationModel,
    build_model,
    canonical_arch,
    create_module,
    fold_logit_offsets,
    fold_temperature,
    output_stride_of,
)
from geoseg.model.card import ARCHITECTURES, ModelCard
from geoseg.model.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    DEFAULT_MODEL_FILE,
    DEFAULT_ONNX_FILE,
    default_model_path,
    default_onnx_path,
    is_onnx_path,
    load_default,
    load_model,
    read_card,
    save_checkpoint,
)

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_MODEL_FILE",
    "DEFAULT_ONNX_FILE",
    "ModelCard",
    "SegmentationModel",
    "build_model",
    "canonical_arch",
    "create_module",
    "default_model_path",
    "default_onnx_path",
    "fold_logit_offsets",
    "fold_temperature",
    "is_onnx_path",
    "load_default",
    "load_model",
    "output_stride_of",
    "read_card",
    "save_checkpoint",
]
