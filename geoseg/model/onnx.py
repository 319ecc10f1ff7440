"""Run ONNX models in geoseg: read their cards, open onnxruntime sessions, wrap them as models.

A file exported by geoseg (:mod:`geoseg.model.onnx_export`) carries its whole model card under the
metadata key ``geoseg_card``. Loading takes the card from there or, failing that, builds one from
the Deepness keys (see :func:`card_from_deepness`), so models made for QGIS Deepness run in geoseg
with their own settings. How their outputs are read is :mod:`geoseg.model.onnx_module`'s part.
Reading a card and running a model need onnxruntime only.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.errors import ModelError
from geoseg.model import ModelCard, SegmentationModel
from geoseg.types import ClassInfo, ClassTable, default_color

#: The metadata key holding the geoseg model card (JSON).
CARD_KEY = "geoseg_card"
#: Tile edge assumed for a Deepness model that states none and takes tiles of any size.
DEEPNESS_DEFAULT_TILE = 512
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


# --- loading -----------------------------------------------------------------------------------


def new_session(
    model: bytes | str | Path, *, device: str = "cpu", threads: int | None = None
) -> Any:
    """An onnxruntime session: CUDA for ``device`` ``cuda[:N]`` where onnxruntime has it.

    ``threads`` sets onnxruntime's intra-op thread count (``None``: onnxruntime's default, one per
    physical core).
    """
    ort = import_optional("onnxruntime")
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


def import_optional(module: str) -> Any:
    """Import an optional ONNX package (``onnx``, ``onnxruntime``), or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"ONNX models need the {module} package; {_INSTALL_HINT}") from exc
