"""Building segmentation models and loading checkpoints that carry their own metadata.

A geoseg checkpoint is a ``torch.save`` dict::

    {"format": "geoseg-checkpoint", "version": 1, "card": {...ModelCard...}, "state_dict": {...}}

The card holds everything inference needs (architecture, encoder, bands, normalisation, classes,
tile size); the state dict may be stored in half precision. torchgeo Lightning checkpoints
(``SemanticSegmentationTask``) load too. This module knows nothing of files on disk beyond the
checkpoint itself, nor of tiles. ONNX files (``*.onnx``) load through :mod:`geoseg.onnx`.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import ConfigError, ModelError
from geoseg.types import ClassTable

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = "geoseg-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_MODEL_FILE = "default.pt"
#: the same network exported to ONNX: the default model's CPU path (see load_default).
DEFAULT_ONNX_FILE = "default.onnx"

#: smp architecture names, with the aliases users (and torchgeo) write.
ARCHITECTURES: dict[str, str] = {
    "unet": "unet",
    "unetplusplus": "unetplusplus",
    "unet++": "unetplusplus",
    "deeplabv3plus": "deeplabv3plus",
    "deeplabv3+": "deeplabv3plus",
    "deeplabv3": "deeplabv3",
    "fpn": "fpn",
    "pspnet": "pspnet",
    "linknet": "linknet",
    "manet": "manet",
    "pan": "pan",
    "upernet": "upernet",
    "segformer": "segformer",
}


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and produces; stored inside every geoseg checkpoint.

    ``mean``/``std`` are per input band in the scene's own units (e.g. 0..255 for uint8), applied
    as ``(x - mean) / std`` before the forward pass.
    """

    arch: str
    encoder: str
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: ClassTable
    name: str = "geoseg-model"
    dtype: str = "uint8"
    tile_size: int = 512
    # Pixels shared by neighbouring tiles when no --overlap is given (None: geoseg's default).
    tile_overlap: int | None = None
    output_stride: int = 32
    ignore_index: int | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Ground sample distances (metres, finest and coarsest) seen in training, zoom included.
    gsd_range: tuple[float, float] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    data_source: str = ""
    licence: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.bands)
        if n == 0:
            raise ModelError("a model card needs at least one input band")
        if len(self.mean) != n or len(self.std) != n:
            raise ModelError(
                f"model card has {n} bands but {len(self.mean)} means and {len(self.std)} stds"
            )
        if any(s <= 0 for s in self.std):
            raise ModelError(f"model card std values must be positive, got {self.std}")
        if len(self.classes) < 1:
            raise ModelError("a model card needs at least one class")
        if self.tile_overlap is not None and not 0 <= self.tile_overlap <= self.tile_size // 2:
            raise ModelError(
                f"model card tile_overlap {self.tile_overlap} must lie in 0..{self.tile_size // 2} "
                "(at most half the tile size)"
            )

    @property
    def in_channels(self) -> int:
        """Number of input bands."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str/int/float/list/dict only) for checkpoints and JSON."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ClassTable):
                value = value.to_list()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; unknown keys are refused so typos surface."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"model card has unknown fields {unknown}; known: {sorted(known)}")
        try:
            kwargs = dict(data)
            kwargs["classes"] = ClassTable.from_list(kwargs["classes"])
            for key in ("bands", "mean", "std"):
                kwargs[key] = tuple(kwargs[key])
            kwargs["mean"] = tuple(float(v) for v in kwargs["mean"])
            kwargs["std"] = tuple(float(v) for v in kwargs["std"])
            if kwargs.get("gsd_range") is not None:
                low, high = kwargs["gsd_range"]
                kwargs["gsd_range"] = (float(low), float(high))
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"model card is incomplete or malformed: {exc}") from exc

    def summary(self) -> str:
        """A human-readable model card (what ``geoseg info MODEL`` prints)."""
        lines = [
            f"model:        {self.name}",
            f"architecture: {self.arch} / encoder {self.encoder}"
            + (f" ({_fmt_value(dict(self.arch_kwargs))})" if self.arch_kwargs else ""),
            f"input:        {self.in_channels} bands {', '.join(self.bands)} ({self.dtype})",
            f"normalise:    mean {_fmt(self.mean)}  std {_fmt(self.std)}",
            f"tile size:    {self.tile_size} px (output stride {self.output_stride})"
            + (f", overlap {self.tile_overlap} px" if self.tile_overlap is not None else ""),
            "pixel size:   "
            + (
                f"{self.gsd_range[0]:g}-{self.gsd_range[1]:g} m (ground sample distances "
                "seen in training)"
                if self.gsd_range
                else "not recorded"
            ),
            "classes:",
        ]
        lines += [f"  {c.id:>3}  {c.name:<16} {c.hex}" for c in self.classes]
        if self.metrics:
            lines.append("metrics:")
            lines += _metric_lines(self.metrics, "  ")
        if self.training:
            lines.append("training:")
            lines += [f"  {k}: {_fmt_value(v)}" for k, v in self.training.items()]
        if self.data_source:
            lines.append(f"data:         {self.data_source}")
        if self.licence:
            lines.append(f"licence:      {self.licence}")
        if self.description:
            lines.append(f"about:        {self.description}")
        return "\n".join(lines)


def _metric_lines(metrics: Mapping[str, Any], indent: str) -> list[str]:
    """Metrics one per line; a ``regions`` mapping gets a block per region."""
    lines = []
    for key, value in metrics.items():
        if key == "regions" and isinstance(value, Mapping):
            for region, scores in value.items():
                lines.append(f"{indent}region {region}:")
                lines += _metric_lines(scores, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_fmt_value(value)}")
    return lines


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple) and value and isinstance(value[0], float):
        return _fmt(value)
    return str(value)


class SegmentationModel:
    """A torch module paired with its :class:`ModelCard`.

    Any ``torch.nn.Module`` mapping ``(N, C, H, W)`` float inputs to ``(N, K, H, W)`` logits works,
    so users (and tests) can bring their own network.
    """

    def __init__(self, module: torch.nn.Module, card: ModelCard) -> None:
        self.module = module
        self.card = card

    def __repr__(self) -> str:
        card = self.card
        return f"SegmentationModel({card.arch}/{card.encoder}, {card.num_classes} classes)"


def canonical_arch(arch: str) -> str:
    """The smp architecture name for ``arch`` (case-insensitive aliases accepted)."""
    key = arch.lower().replace("_", "").replace("-", "")
    if key not in ARCHITECTURES:
        choices = ", ".join(sorted(set(ARCHITECTURES.values())))
        raise ModelError(f"unknown architecture {arch!r}; choose one of: {choices}")
    return ARCHITECTURES[key]


def create_module(
    arch: str,
    encoder: str,
    in_channels: int,
    num_classes: int,
    *,
    encoder_weights: str | None = None,
    **arch_kwargs: Any,
) -> torch.nn.Module:
    """Build an smp network (U-Net, DeepLabV3+, FPN, PSPNet, ...) with any smp/timm encoder.

    ``encoder_weights`` defaults to ``None``: geoseg never downloads weights by itself. The
    default model's family (U-Net on EfficientNet-Lite) is built by :mod:`geoseg.nets` in plain
    torch, the same network without importing smp, timm and torchvision (seconds of start-up).
    """
    from geoseg import nets

    name = canonical_arch(arch)
    if encoder_weights is None and nets.supports(name, encoder, arch_kwargs):
        return nets.build_unet_efficientnet_lite(encoder, in_channels, num_classes, **arch_kwargs)
    import segmentation_models_pytorch as smp

    try:
        module: torch.nn.Module = smp.create_model(
            name,
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **arch_kwargs,
        )
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(
            f"cannot build {name} with encoder {encoder!r}: {exc}. Encoder names are smp's "
            "(e.g. resnet18, mobilenet_v2, efficientnet-b0) or timm's with a 'tu-' prefix."
        ) from exc
    return module


def output_stride_of(module: torch.nn.Module) -> int:
    """The factor tile sizes must be divisible by (the encoder's output stride, 1 if none)."""
    encoder = getattr(module, "encoder", None)
    stride = getattr(encoder, "output_stride", None)
    if stride is None:
        return 1 if encoder is None else 32
    return int(stride)


def build_model(card: ModelCard) -> SegmentationModel:
    """A freshly initialised model for a card (random weights; training starts here)."""
    module = create_module(
        card.arch, card.encoder, card.in_channels, card.num_classes, **dict(card.arch_kwargs)
    )
    stride = output_stride_of(module)
    if stride != card.output_stride:
        card = dataclasses.replace(card, output_stride=stride)
    return SegmentationModel(module, card)


def fold_logit_offsets(module: torch.nn.Module, offsets: Sequence[float]) -> None:
    """Add a constant per class to the network's logits by shifting its last convolution's bias.

    smp networks end in ``segmentation_head``: a convolution, then an optional bilinear upsampling
    (whose weights sum to one, so it passes a constant through) and an identity activation.
    Shifting the bias therefore shifts every output logit of class ``k`` by ``offsets[k]``.
    """
    import torch

    head = getattr(module, "segmentation_head", None)
    conv = head[0] if isinstance(head, torch.nn.Sequential) and len(head) else None
    if not isinstance(conv, torch.nn.Conv2d) or conv.bias is None:
        raise ModelError(
            "cannot apply logit offsets: the network has no segmentation_head convolution with a "
            "bias (only smp architectures are supported)"
        )
    if conv.out_channels != len(offsets):
        raise ModelError(
            f"{len(offsets)} logit offsets given for a network with {conv.out_channels} classes"
        )
    with torch.no_grad():
        conv.bias.add_(torch.tensor(list(offsets), dtype=conv.bias.dtype, device=conv.bias.device))


def save_checkpoint(model: SegmentationModel, path: str | Path, *, half: bool = False) -> Path:
    """Write a geoseg checkpoint (``half=True`` stores float weights as float16 to halve size).

    Only smp-built models can be saved this way, since loading rebuilds them from the card.
    """
    import torch

    path = Path(path)
    state = {}
    for key, tensor in model.module.state_dict().items():
        t = tensor.detach().cpu()
        state[key] = t.half() if half and t.is_floating_point() else t
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "card": model.card.to_dict(),
        "state_dict": state,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def is_onnx_path(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX model (by its ``.onnx`` suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def default_model_path() -> Path:
    """Where the shipped default model lives inside the package."""
    return Path(str(resources.files("geoseg") / "data" / "models" / DEFAULT_MODEL_FILE))


def default_onnx_path() -> Path:
    """Where the ONNX export of the shipped default model lives inside the package."""
    return default_model_path().with_name(DEFAULT_ONNX_FILE)


def load_default(device: str | None = "auto") -> SegmentationModel:
    """The shipped default model, run the fastest way on ``device``.

    On the CPU that is its ONNX export through onnxruntime (measured faster than PyTorch eager:
    ``benchmarks/onnx_cpu.py``), when onnxruntime is installed and the export ships; on a GPU,
    or without them, the PyTorch checkpoint. Both carry the same card and weights.
    """
    import importlib.util

    from geoseg.inference import resolve_device

    onnx_file = default_onnx_path()
    on_cpu = resolve_device(device).type == "cpu"
    if on_cpu and onnx_file.exists() and importlib.util.find_spec("onnxruntime") is not None:
        return load_model(onnx_file)
    return load_model(None)


class _CardOnlyUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` payload without torch: tensors and storages become ``None``.

    Only plain containers are rebuilt; every other class a checkpoint names (torch's tensor
    rebuilders, storages) is replaced by a stub that returns ``None``, so no code from the file
    runs and torch is never imported.
    """

    SAFE: frozenset[tuple[str, str]] = frozenset(
        {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        return _stub

    def persistent_load(self, pid: Any) -> None:
        return None


def _stub(*_args: Any, **_kwargs: Any) -> None:
    return None


def read_card(path: str | Path | None = None) -> ModelCard:
    """The model card of a geoseg checkpoint, read without importing torch (milliseconds).

    ``None`` reads the shipped default model's. Other checkpoints (torchgeo Lightning ones, or
    files this reader does not understand) are loaded with :func:`load_model`.
    """
    target = Path(path) if path is not None else default_model_path()
    if is_onnx_path(target):
        from geoseg.onnx import read_onnx_card

        return read_onnx_card(target)
    try:
        with zipfile.ZipFile(target) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            with archive.open(name) as handle:
                payload = _CardOnlyUnpickler(handle).load()
    except Exception:  # anything this reader cannot follow: load_model says what is wrong
        payload = None
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        if payload.get("version") == CHECKPOINT_VERSION:
            return ModelCard.from_dict(payload.get("card", {}))
    return load_model(path).card


def load_model(
    path: str | Path | None = None,
    *,
    classes: ClassTable | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bands: Sequence[str] | None = None,
) -> SegmentationModel:
    """Load a geoseg or torchgeo Lightning checkpoint; ``None`` loads the shipped default model.

    The keyword arguments fill in what a torchgeo checkpoint does not carry (its legend and
    normalisation); they are ignored for geoseg checkpoints, whose card is authoritative. An
    ``*.onnx`` file loads as an ONNX model run through onnxruntime (:func:`geoseg.onnx.load_onnx`).
    """
    if path is not None and is_onnx_path(path):
        from geoseg.onnx import load_onnx

        return load_onnx(path)
    import torch

    if path is None:
        path = default_model_path()
        if not path.exists():
            raise ModelError(
                "no default model is installed yet; pass a checkpoint with --model "
                "(train one with `geoseg train CONFIG.yaml`)"
            )
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model checkpoint {path} does not exist; check the --model path")
    if path.is_dir():
        raise ModelError(f"model checkpoint {path} is a directory; pass the checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt pickles/zips
        # torch's first sentence names the failure; the rest of its advice (weights_only=False)
        # would run arbitrary code from an untrusted file
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise ModelError(
            f"cannot read model checkpoint {path}: it is corrupt or not a torch checkpoint "
            f"({type(exc).__name__}: {reason}); download or export it again"
        ) from exc
    if not isinstance(payload, Mapping):
        raise ModelError(f"{path} is not a model checkpoint (it holds a {type(payload).__name__})")
    if payload.get("format") == CHECKPOINT_FORMAT:
        return _from_geoseg_payload(payload, path)
    if "hyper_parameters" in payload and "state_dict" in payload:
        return _from_lightning_payload(
            payload, path, classes=classes, mean=mean, std=std, bands=bands
        )
    raise ModelError(
        f"{path} is neither a geoseg checkpoint nor a torchgeo Lightning checkpoint "
        f"(keys: {sorted(payload)[:8]})"
    )


def _load_state(module: torch.nn.Module, state: Mapping[str, Any], path: Path) -> None:
    target = module.state_dict()
    converted = {}
    for key, tensor in state.items():
        if key in target and hasattr(tensor, "to"):
            converted[key] = tensor.to(dtype=target[key].dtype)
    try:
        module.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        # torch lists every mismatch on its own line after a header; the first one is enough
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = details[0] if details else str(exc).splitlines()[0]
        raise ModelError(
            f"weights in {path} do not fit the architecture its card describes ({first[:200]}); "
            "the checkpoint was edited or saved from another network: export it again"
        ) from exc


def _from_geoseg_payload(payload: Mapping[str, Any], path: Path) -> SegmentationModel:
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise ModelError(
            f"{path} is a geoseg checkpoint of version {version}; this geoseg reads version "
            f"{CHECKPOINT_VERSION}. Upgrade geoseg or re-export the model."
        )
    card = ModelCard.from_dict(payload.get("card", {}))
    model = build_model(card)
    _load_state(model.module, payload.get("state_dict", {}), path)
    model.module.eval()
    return model


def _from_lightning_payload(
    payload: Mapping[str, Any],
    path: Path,
    *,
    classes: ClassTable | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    bands: Sequence[str] | None,
) -> SegmentationModel:
    hp = dict(payload["hyper_parameters"])
    try:
        arch = str(hp["model"])
        encoder = str(hp["backbone"])
        in_channels = int(hp["in_channels"])
        num_classes = int(hp["num_classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{path} is a Lightning checkpoint but not from torchgeo's SemanticSegmentationTask "
            f"(missing hyper-parameter {exc})"
        ) from exc
    geoseg_meta = hp.get("geoseg_card")
    if isinstance(geoseg_meta, Mapping):
        card = ModelCard.from_dict(geoseg_meta)
    else:
        table = classes or ClassTable.default(num_classes)
        if len(table) != num_classes:
            raise ModelError(f"{path} predicts {num_classes} classes but {len(table)} were given")
        band_names = tuple(bands) if bands else tuple(f"band_{i + 1}" for i in range(in_channels))
        card = ModelCard(
            arch=canonical_arch(arch),
            encoder=encoder,
            bands=band_names,
            mean=tuple(mean) if mean else (0.0,) * in_channels,
            std=tuple(std) if std else (255.0,) * in_channels,
            classes=table,
            name=path.stem,
            ignore_index=hp.get("ignore_index"),
            description="loaded from a torchgeo SemanticSegmentationTask checkpoint",
        )
    state = {
        key.removeprefix("model."): value
        for key, value in payload["state_dict"].items()
        if key.startswith("model.")
    }
    model = build_model(card)
    _load_state(model.module, state, path)
    offsets = hp.get("logit_offsets")
    if offsets is not None:
        # geoseg's trainer validates with these offsets (prior correction for class-weighted
        # training); fold them in so the checkpoint predicts what validation scored.
        fold_logit_offsets(model.module, [float(v) for v in offsets])
    model.module.eval()
    return model
