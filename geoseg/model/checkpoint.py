"""Building segmentation models and loading checkpoints that carry their own metadata.

A geoseg checkpoint is a ``torch.save`` dict::

    {"format": "geoseg-checkpoint", "version": 1, "card": {...ModelCard...}, "state_dict": {...}}

The card holds everything inference needs (architecture, encoder, bands, normalisation, classes,
tile size); the state dict may be stored in half precision. torchgeo Lightning checkpoints
(``SemanticSegmentationTask``) load too. This module knows nothing of files on disk beyond the
checkpoint itself, nor of tiles. ONNX files (``*.onnx``) load through :mod:`geoseg.model.onnx`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.errors import ModelError
from geoseg.types import ClassTable

if TYPE_CHECKING:
    import torch

from geoseg.model.build import SegmentationModel, build_model, canonical_arch, fold_logit_offsets
from geoseg.model.card import ModelCard

CHECKPOINT_FORMAT = "geoseg-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_MODEL_FILE = "default.pt"
#: the same network exported to ONNX: the default model's CPU path (see load_default).
DEFAULT_ONNX_FILE = "default.onnx"


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

    from geoseg.model.device import resolve_device

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
        from geoseg.model.onnx import read_onnx_card

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
    ``*.onnx`` file loads as an ONNX model run through onnxruntime
    (:func:`geoseg.model.onnx.load_onnx`).
    """
    if path is not None and is_onnx_path(path):
        from geoseg.model.onnx import load_onnx

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
