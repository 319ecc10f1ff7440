"""ONNX models both ways: export geoseg models for QGIS Deepness, load ONNX models to run.

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

Loading takes the card from ``geoseg_card`` or, failing that, builds one from the Deepness keys
(see :func:`card_from_deepness`), so models made for Deepness run in geoseg with their own
settings. How their outputs are read is :mod:`geoseg.model.onnx_module`'s part. Reading a card needs
onnxruntime only; exporting needs torch and the ``onnx`` package (``pip install 'geoseg[onnx]'``).
"""

from __future__ import annotations

import ast
import json
import math
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import ModelError, OutputError, OutputExistsError
from geoseg.model import ModelCard, SegmentationModel, load_model
from geoseg.types import ClassInfo, ClassTable, default_color

if TYPE_CHECKING:
    import torch

#: ONNX operator set of exported files (onnxruntime >= 1.12 reads it).
ONNX_OPSET = 17
#: The metadata key holding the geoseg model card (JSON).
CARD_KEY = "geoseg_card"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Tile edge assumed for a Deepness model that states none and takes tiles of any size.
DEEPNESS_DEFAULT_TILE = 512
#: Largest difference in probability between onnxruntime and torch that an export may show.
EXPORT_TOLERANCE = 1e-4
_INSTALL_HINT = "install it with: pip install 'geoseg[onnx]'"


@dataclass(frozen=True)
class OnnxSignature:
    """What an ONNX graph takes and gives: its first input and first output.

    Sizes are ``None`` where the graph leaves them dynamic (a named dimension).
    """

    input_name: str
    input_type: str  # e.g. "tensor(float)"
    in_channels: int | None
    batch: int | None
    height: int | None
    width: int | None
    output_name: str
    output_rank: int | None
    output_channels: int | None  # None when dynamic or when the output has no channel axis
    outputs: int  # how many outputs the graph has (geoseg reads the first)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """The input's (height, width) when the graph fixes it."""
        if self.height is None or self.width is None:
            return None
        return (self.height, self.width)


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


# --- export ------------------------------------------------------------------------------------


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
    onnx = _import("onnx")
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


# --- loading -----------------------------------------------------------------------------------


def new_session(
    model: bytes | str | Path, *, device: str = "cpu", threads: int | None = None
) -> Any:
    """An onnxruntime session: CUDA for ``device`` ``cuda[:N]`` where onnxruntime has it.

    ``threads`` sets onnxruntime's intra-op thread count (``None``: onnxruntime's default, one per
    physical core).
    """
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: geoseg reports them itself
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def read_onnx_card(path: str | Path) -> ModelCard:
    """The model card of an ONNX file (from ``geoseg_card``, else from Deepness's keys)."""
    _, session = _open(Path(path))
    return _card_of(session, Path(path))


def load_onnx(path: str | Path) -> SegmentationModel:
    """An ONNX model as a :class:`SegmentationModel` that geoseg's engines run like any other.

    Its module (:class:`geoseg.model.onnx_module.OnnxModule`) runs the graph through onnxruntime.
    Errors (:class:`~geoseg.errors.ModelError`) name what is missing or unreadable.
    """
    from geoseg.model.onnx_module import OnnxModule

    target = Path(path)
    data, session = _open(target)
    card = _card_of(session, target)
    signature = signature_of(session)
    module = OnnxModule(data, signature, num_classes=card.num_classes, source=target.name)
    return SegmentationModel(module, card)


def _open(path: Path) -> tuple[bytes, Any]:
    """The bytes of an ONNX file and a CPU session on them; clear errors for bad files."""
    if not path.exists():
        raise ModelError(f"ONNX model {path} does not exist; check the --model path")
    if path.is_dir():
        raise ModelError(f"ONNX model {path} is a directory; pass the .onnx file")
    data = path.read_bytes()
    try:
        session = new_session(data)
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot read ONNX model {path}: it is corrupt or not an ONNX model ({reason[:200]}); "
            "download or export it again"
        ) from exc
    return data, session


def signature_of(session: Any) -> OnnxSignature:
    """The :class:`OnnxSignature` of an onnxruntime session."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"the ONNX model takes {len(inputs)} inputs; geoseg runs models of one")
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(
            f"the ONNX model's input has shape {shape}; geoseg runs models taking (N, C, H, W)"
        )
    if not outputs:
        raise ModelError("the ONNX model has no output")
    out_shape = outputs[0].shape
    rank = len(out_shape) if out_shape is not None else None
    channels = _dim(out_shape[1]) if rank == 4 else None
    # a graph may take any batch but reshape to a fixed one inside (Deepness's test models do)
    batch = _dim(shape[0]) or (_dim(out_shape[0]) if rank else None)
    return OnnxSignature(
        input_name=inputs[0].name,
        input_type=inputs[0].type,
        in_channels=_dim(shape[1]),
        batch=batch,
        height=_dim(shape[2]),
        width=_dim(shape[3]),
        output_name=outputs[0].name,
        output_rank=rank,
        output_channels=channels,
        outputs=len(outputs),
    )


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _card_of(session: Any, path: Path) -> ModelCard:
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    signature = signature_of(session)
    if CARD_KEY in metadata:
        try:
            data = json.loads(metadata[CARD_KEY])
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: metadata {CARD_KEY!r} is not valid JSON ({exc})") from exc
        if not isinstance(data, Mapping):
            raise ModelError(f"{path}: metadata {CARD_KEY!r} is not a JSON object")
        card = ModelCard.from_dict(data)
    else:
        card = card_from_deepness(metadata, signature, name=path.stem)
    if signature.in_channels is not None and signature.in_channels != card.in_channels:
        raise ModelError(
            f"{path} takes {signature.in_channels} input bands but its metadata describes "
            f"{card.in_channels} ({', '.join(card.bands)})"
        )
    channels = 1 if signature.output_rank == 3 else signature.output_channels
    if (
        channels is not None
        and channels != card.num_classes
        and (channels, card.num_classes) != (1, 2)
    ):
        raise ModelError(
            f"{path} outputs {channels} channels but its metadata names {card.num_classes} "
            "classes; export it again"
        )
    return card


# --- Deepness metadata -------------------------------------------------------------------------


def card_from_deepness(
    metadata: Mapping[str, str], signature: OnnxSignature, *, name: str
) -> ModelCard:
    """A model card from Deepness's metadata keys and the graph's shapes.

    ``class_names`` (or its old name ``names``) is required; a list of such objects (one per
    output) gives the first output's. The rest defaults as in Deepness: no standardisation after
    dividing by 255, the graph's input size (else 512 px) as tile size, no recorded resolution.
    A one-channel (sigmoid) output becomes two classes, background and the named class.
    """
    values = {key: _json_value(metadata, key) for key in metadata if key != CARD_KEY}
    model_type = values.get("model_type")
    if model_type is not None and str(model_type).lower() != "segmentor":
        raise ModelError(
            f"{name}.onnx is a Deepness {model_type} model; geoseg runs segmentation models "
            '(model_type "Segmentor") only'
        )
    raw_names = values.get("class_names", values.get("names"))
    if raw_names is None:
        raise ModelError(
            f"{name}.onnx carries no metadata geoseg can run it with: it lacks both "
            f"{CARD_KEY!r} (written by `geoseg export`) and Deepness's 'class_names'. Re-export "
            "it with `geoseg export`, or add Deepness metadata to the file (class_names, and "
            "optionally resolution, tile_size, tiles_overlap, standardization_mean and "
            "standardization_std)"
        )
    classes = _class_table(_class_names(raw_names), signature, name)
    channels = signature.in_channels or 3
    mean, std = _standardization(values, channels, name)
    tile = _tile_size(values, signature, name)
    overlap = None
    if "tiles_overlap" in values:
        percent = _number(values["tiles_overlap"], "tiles_overlap", name)
        overlap = min(max(round(percent / 100 * tile), 0), tile // 2)
    gsd = None
    if "resolution" in values:  # cm per pixel; a model trained at one pixel size
        metres = _number(values["resolution"], "resolution", name) / 100
        gsd = (metres, metres) if metres > 0 else None
    # Deepness feeds the bands a user maps to the model's channels, RGB for three
    bands = (
        ("red", "green", "blue")
        if channels == 3
        else tuple(f"band_{i + 1}" for i in range(channels))
    )
    return ModelCard(
        arch="onnx",
        encoder="deepness",
        bands=bands,
        mean=mean,
        std=std,
        classes=classes,
        name=name,
        dtype="uint8",
        tile_size=tile,
        tile_overlap=overlap,
        output_stride=1 if signature.fixed_size else 32,
        gsd_range=gsd,
        description=(
            "ONNX model with Deepness metadata"
            + (f", first of its {signature.outputs} outputs" if signature.outputs > 1 else "")
        ),
    )


def _json_value(metadata: Mapping[str, str], key: str) -> Any:
    text = metadata[key]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if key in ("class_names", "names"):
            try:  # Deepness accepts Python literals here ({0: 'a'}, integer keys)
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                pass
        return text  # a bare string (Deepness's own files write model_type as JSON, others not)


def _class_names(raw: Any) -> list[str]:
    """Names in id order from ``{"0": name, ...}`` or a list of those (the first is used)."""
    if isinstance(raw, list) and raw and all(isinstance(item, Mapping) for item in raw):
        raw = raw[0]
    if not isinstance(raw, Mapping) or not raw:
        raise ModelError(
            f'metadata class_names must be a JSON object {{"0": name, ...}}, got {raw!r}'
        )
    try:
        by_id = sorted((int(key), str(value)) for key, value in raw.items())
    except (TypeError, ValueError) as exc:
        raise ModelError(f"metadata class_names keys must be integers, got {list(raw)}") from exc
    ids = [i for i, _ in by_id]
    if ids != list(range(len(ids))):
        raise ModelError(f"metadata class_names ids must be consecutive from 0, got {ids}")
    return [n for _, n in by_id]


def _class_table(names: Sequence[str], signature: OnnxSignature, name: str) -> ClassTable:
    one_channel = signature.output_rank == 3 or signature.output_channels == 1
    if signature.output_channels is None and signature.output_rank == 4 and len(names) == 1:
        one_channel = True  # a dynamic channel axis and one name: read as a sigmoid output
    if one_channel:
        if len(names) == 1:
            background = "background" if names[0] != "background" else "not_background"
            names = [background, names[0]]
        elif len(names) != 2:
            raise ModelError(
                f"{name}.onnx has a one-channel (sigmoid) output but names {len(names)} classes; "
                "give one (the class) or two (background, class)"
            )
    elif signature.output_channels is not None and signature.output_channels != len(names):
        raise ModelError(
            f"{name}.onnx outputs {signature.output_channels} channels but its class_names "
            f"names {len(names)} classes"
        )
    try:
        return ClassTable(tuple(ClassInfo(i, n, default_color(i)) for i, n in enumerate(names)))
    except Exception as exc:  # duplicate names, too many classes
        raise ModelError(f"{name}.onnx: unusable class_names {list(names)}: {exc}") from exc


def _standardization(
    values: Mapping[str, Any], channels: int, name: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Raw-value mean/std (geoseg's) from Deepness's, which apply after dividing by 255."""
    keys = ("standardization_mean", "standardization_std")
    present = [k for k in keys if k in values]
    if not present:
        return (0.0,) * channels, (255.0,) * channels
    if len(present) == 1:
        missing = next(k for k in keys if k not in values)
        raise ModelError(f"{name}.onnx has {present[0]} but no {missing}; give both or neither")
    out = []
    for key in keys:
        raw = values[key]
        items = raw if isinstance(raw, list) else [raw]
        numbers = [_number(v, key, name) * 255 for v in items]
        if len(numbers) == 1:
            numbers *= channels
        if len(numbers) != channels:
            raise ModelError(
                f"{name}.onnx: {key} has {len(numbers)} values for {channels} input bands"
            )
        out.append(tuple(numbers))
    if any(s <= 0 for s in out[1]):
        raise ModelError(
            f"{name}.onnx: standardization_std must be positive, got {values[keys[1]]}"
        )
    return out[0], out[1]


def _tile_size(values: Mapping[str, Any], signature: OnnxSignature, name: str) -> int:
    fixed = signature.fixed_size
    if fixed is not None:
        if fixed[0] != fixed[1]:
            raise ModelError(
                f"{name}.onnx takes {fixed[0]}x{fixed[1]} px inputs; geoseg needs square tiles"
            )
        return fixed[0]  # the only size the graph takes, whatever the metadata says
    for key in ("tile_size", "tiles_size"):
        if key in values:
            tile = int(_number(values[key], key, name))
            if tile < 1:
                raise ModelError(f"{name}.onnx: {key} must be positive, got {values[key]}")
            return tile
    return DEEPNESS_DEFAULT_TILE


def _number(value: Any, key: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{name}.onnx: metadata {key} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise ModelError(f"{name}.onnx: metadata {key} must be finite, got {value!r}")
    return number


def _import(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"ONNX models need the {module} package; {_INSTALL_HINT}") from exc
