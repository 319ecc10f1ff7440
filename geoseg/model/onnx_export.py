"""Export geoseg models to ONNX files that QGIS Deepness and ``geoseg run`` both read.

An exported file holds the network with a softmax head: its input is a batch of normalised tiles
``(N, C, H, W)`` float32 and its output ``(N, K, H, W)`` class probabilities, with batch, height and
width dynamic (tiles must be multiples of the card's output stride, as in geoseg). It is written at
ONNX opset 17 (IR version 8), which onnxruntime reads from version 1.12 on, so the onnxruntime
that Deepness installs into QGIS runs it as well. Its ``custom_metadata_map`` holds, every value
JSON as Deepness parses it (``json.loads``):

=======================  ===========================================================================
key                      value
=======================  ===========================================================================
``model_type``           ``"Segmentor"``
``class_names``          ``{"0": "building", "1": "road", ...}``
``resolution``           cm per pixel: the geometric mean of the card's training GSD range
``tile_size``            the card's tile size in pixels (and ``tiles_size``: Deepness's code reads
                         the first, its documentation and metadata tool write the second)
``tiles_overlap``        percent of the tile: the overlap geoseg uses by default
``standardization_*``    ``_mean`` and ``_std`` per band, for inputs already divided by 255
                         (Deepness divides, then standardises): geoseg's ``(x - mean) / std`` on raw
                         values is ``(x / 255 - mean / 255) / (std / 255)``
``seg_thresh``           ``0``: Deepness then keeps every pixel's most probable class, like geoseg
``geoseg_card``          the whole geoseg model card, so the file is a complete geoseg model
=======================  ===========================================================================

Exporting needs torch and the ``onnx`` package (``pip install 'geoseg[onnx]'``); the check run
uses onnxruntime through :func:`geoseg.model.onnx.new_session`. Loading the files back is
:mod:`geoseg.model.onnx`'s part.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import ModelError, OutputError, OutputExistsError
from geoseg.model import ModelCard, SegmentationModel, load_model
from geoseg.model.onnx import CARD_KEY, import_optional, new_session

if TYPE_CHECKING:
    import torch

#: ONNX operator set of exported files (onnxruntime >= 1.12 reads it).
ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Largest difference in probability between onnxruntime and torch that an export may show.
EXPORT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    opset: int
    dynamic_size: bool  # False: the graph takes tiles of exactly the card's tile size
    max_difference: float  # largest |p_onnx - p_torch| of the check run
    metadata: Mapping[str, str]

    def summary(self) -> str:
        """One line for the CLI."""
        size = "dynamic batch, height and width" if self.dynamic_size else "dynamic batch"
        megabytes = self.path.stat().st_size / 1e6
        return (
            f"wrote {self.path} ({megabytes:.1f} MB, opset {self.opset}, {size}; "
            f"onnxruntime matches torch within {self.max_difference:.1g} in probability)"
        )


def export_onnx(
    model: SegmentationModel | str | Path | None,
    path: str | Path,
    *,
    opset: int = ONNX_OPSET,
    overwrite: bool = True,
) -> OnnxExport:
    """Write a geoseg model as an ONNX file that Deepness (QGIS) and ``geoseg run`` both read.

    The file returns softmax probabilities, so onnxruntime and geoseg's torch path give the same
    classes (logit offsets of the checkpoint are already folded into the network). Before it is
    written, the graph is run by onnxruntime at a tile size other than the traced one and compared
    with torch; a network whose graph does not follow other sizes is exported for tiles of its
    card's tile size only.

    Args:
        model: a loaded model, a checkpoint path, or ``None``/``"default"`` for the shipped one.
        path: the ``.onnx`` file to write.
        opset: ONNX operator set (13 to 20; 17, the default, suits QGIS's onnxruntime).
        overwrite: replace an existing file (else :class:`~geoseg.errors.OutputExistsError`).
    """
    onnx = import_optional("onnx")
    target = Path(path)
    if target.suffix.lower() != ".onnx":
        raise OutputError(
            f"cannot export to {target}: name the file *.onnx (geoseg and Deepness recognise ONNX "
            "models by that suffix)"
        )
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass --overwrite to replace it")
    if not 13 <= opset <= 20:
        raise ModelError(f"opset {opset} is not supported; use 13..20 (17 suits QGIS Deepness)")
    seg = _torch_model(model)
    graph, dynamic, difference = _checked_graph(seg, opset)
    metadata = deepness_metadata(seg.card)
    proto = onnx.load_from_string(graph)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{seg.card.name}: exported by geoseg"
    _write(target, proto.SerializeToString())
    return OnnxExport(target, opset, dynamic, difference, metadata)


def _torch_model(model: SegmentationModel | str | Path | None) -> SegmentationModel:
    """The torch model to export (loaded from a checkpoint path, or the default one)."""
    from geoseg.model.onnx_module import OnnxModule

    if isinstance(model, SegmentationModel):
        seg = model
    else:
        seg = load_model(None if model is None or str(model) == "default" else model)
    if isinstance(seg.module, OnnxModule):
        raise ModelError("this model is an ONNX model already; export the checkpoint it came from")
    return seg


def _checked_graph(seg: SegmentationModel, opset: int) -> tuple[bytes, bool, float]:
    """The traced graph, whether its height and width are dynamic, and its largest difference.

    The graph is traced on a small tile and run by onnxruntime on a larger one: where the two
    agree, no operation froze the traced size into the graph. Else it is traced again at the
    card's tile size, with only the batch dynamic.
    """
    card = seg.card
    network = _probability_network(seg.module)
    stride = max(card.output_stride, 1)
    traced = max(2 * stride, 32 // stride * stride)
    graph = _trace(network, card.in_channels, traced, opset, dynamic_size=True)
    try:
        difference = _compare(graph, network, card.in_channels, traced + max(stride, 16))
        if difference <= EXPORT_TOLERANCE:
            return graph, True, difference
    except ModelError:  # onnxruntime cannot even run it at the other size
        pass
    tile = -(-card.tile_size // stride) * stride
    graph = _trace(network, card.in_channels, tile, opset, dynamic_size=False)
    difference = _compare(graph, network, card.in_channels, tile)
    if difference > EXPORT_TOLERANCE:
        raise ModelError(
            f"the exported ONNX graph of {card.name} differs from the torch network by "
            f"{difference:.3g} in probability; this network cannot be exported to ONNX"
        )
    return graph, False, difference


def deepness_metadata(card: ModelCard) -> dict[str, str]:
    """The ``custom_metadata_map`` of an exported model: Deepness's keys and the geoseg card.

    Every value is JSON text (see the module docstring for what each key holds).
    """
    from geoseg.config import TilingConfig

    tile, overlap = TilingConfig().resolve(card.tile_size, card.tile_overlap)
    values: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(card.classes)},  # by channel
        "tile_size": tile,
        "tiles_size": tile,
        "tiles_overlap": math.ceil(100 * overlap / tile),
        "standardization_mean": [m / 255 for m in card.mean],
        "standardization_std": [s / 255 for s in card.std],
        "seg_thresh": 0.0,
    }
    if card.gsd_range is not None:
        low, high = card.gsd_range
        values["resolution"] = round(math.sqrt(low * high) * 100, 4)
    metadata = {key: json.dumps(value) for key, value in values.items()}
    metadata[CARD_KEY] = json.dumps(card.to_dict(), default=str)
    return metadata


def _probability_network(module: torch.nn.Module) -> torch.nn.Module:
    """A CPU float32 copy of ``module`` in eval mode ending in a softmax, ready to trace."""
    import copy

    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.network(x), dim=1)

    network = copy.deepcopy(module).cpu().float().eval()
    _freeze_same_padding(network)
    return Probabilities(network).eval()


def _freeze_same_padding(network: torch.nn.Module) -> None:
    """Replace TensorFlow-'SAME' convolutions (geoseg's and timm's ``Conv2dSame``) in place.

    They compute their padding from each input's size with Python arithmetic, which tracing
    freezes at the traced size. For an input whose size is a multiple of the stride, which geoseg's
    tiles always are, the padding is the same at every size: ``(kernel - 1) * dilation + 1 -
    stride`` in all, the extra pixel right and below. That constant padding is what is exported.
    """
    import torch

    for parent in network.modules():
        for name, child in list(parent.named_children()):
            if type(child).__name__ != "Conv2dSame" or not isinstance(child, torch.nn.Conv2d):
                continue
            (kh, kw), (sh, sw), (dh, dw) = child.kernel_size, child.stride, child.dilation
            pad_h, pad_w = max((kh - 1) * dh + 1 - sh, 0), max((kw - 1) * dw + 1 - sw, 0)
            conv = torch.nn.Conv2d(
                child.in_channels,
                child.out_channels,
                (kh, kw),
                (sh, sw),
                0,
                (dh, dw),
                child.groups,
                bias=child.bias is not None,
            )
            conv.load_state_dict(child.state_dict())
            pad = torch.nn.ZeroPad2d(
                (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            )
            setattr(parent, name, torch.nn.Sequential(pad, conv))


def _trace(
    network: torch.nn.Module, channels: int, size: int, opset: int, *, dynamic_size: bool
) -> bytes:
    """The ONNX graph of ``network`` traced on a ``(1, channels, size, size)`` input."""
    import torch

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    with tempfile.TemporaryDirectory(prefix="geoseg-onnx-") as folder, warnings.catch_warnings():
        graph = Path(folder) / "graph.onnx"
        # the tracer warns about every Python number it freezes (the size checks compare the
        # graph with torch instead), and torch about the exporter being the TorchScript one
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                network,
                (torch.zeros(1, channels, size, size),),
                graph,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types for unsupported operations
            raise ModelError(f"torch cannot export this network to ONNX: {exc}") from exc
        return graph.read_bytes()


def _compare(graph: bytes, network: torch.nn.Module, channels: int, size: int) -> float:
    """Largest |p_onnx - p_torch| on two pseudo-random ``size x size`` tiles."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, size, size, generator=generator)
    with torch.inference_mode():
        expected = network(x).numpy()
    try:
        got = new_session(graph).run(None, {INPUT_NAME: x.numpy()})[0]
    except Exception as exc:  # onnxruntime raises its own types for shape errors
        raise ModelError(f"onnxruntime cannot run the exported graph at {size} px: {exc}") from exc
    if got.shape != expected.shape:
        raise ModelError(f"the exported graph returns {got.shape}, torch {expected.shape}")
    return float(np.abs(got - expected).max())


def _write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a ``.part`` file, so no half file is ever left."""
    if not target.parent.is_dir():
        raise OutputError(f"cannot write {target}: folder {target.parent} does not exist")
    tmp = target.with_name(target.name + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc.strerror}") from exc
