"""Scoring a model against labelled images through the real tiled pipeline.

``evaluate(model, images, labels)`` runs :func:`geoseg.segment` on each image (so tiling,
overlap blending, normalisation and band selection are exactly what users get), reads back
``classes.tif`` and compares it with the labels: an integer label raster, a colour-coded mask, or
vector polygons rasterized onto the image grid. Metrics come from :mod:`geoseg.training.metrics`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from geoseg.errors import (
    ConfigError,
    GeosegError,
    InputError,
    TrainingError,
    UngeoreferencedWarning,
)
from geoseg.model import SegmentationModel, load_model
from geoseg.training import metrics as seg_metrics
from geoseg.training.data import (
    IGNORE_INDEX,
    LabelEncoding,
    encode_labels,
    encoding_from_classes,
    encoding_from_labels,
    folder_pairs,
    rasterize_vector_labels,
)
from geoseg.training.label_sets import LabelSets, merge_confusion, merged_classes
from geoseg.types import ClassTable

if TYPE_CHECKING:
    from geoseg.training.config import DataConfig, TrainConfig

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")

Log = Callable[[str], None]


@dataclass(frozen=True)
class ImageScore:
    """One image's confusion matrix and run time."""

    image: str
    labels: str
    confusion: npt.NDArray[np.int64]
    megapixels: float
    seconds: float
    unpredicted: int = 0


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics over all evaluated images (pixels pooled), with per-image scores."""

    classes: ClassTable
    confusion: npt.NDArray[np.int64]
    images: tuple[ImageScore, ...]
    model_name: str
    plots: tuple[Path, ...] = field(default_factory=tuple)
    # Coarser classes also scored: {coarse name: [legend classes]} (e.g. tree + low vegetation).
    merge: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """:func:`geoseg.training.metrics.summarize` of the pooled confusion matrix."""
        return seg_metrics.summarize(self.confusion, self.classes.names)

    @property
    def coarse_summary(self) -> dict[str, Any] | None:
        """The same metrics on the merged classes (``None`` without ``merge``)."""
        if not self.merge:
            return None
        cm, names = merge_confusion(self.confusion, self.classes.names, self.merge)
        return seg_metrics.summarize(cm, names)

    @property
    def megapixels_per_second(self) -> float:
        """Throughput of the whole pipeline over all images."""
        seconds = sum(s.seconds for s in self.images)
        return sum(s.megapixels for s in self.images) / seconds if seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        per_image = []
        for score in self.images:
            s = seg_metrics.summarize(score.confusion, self.classes.names)
            per_image.append(
                {
                    "image": score.image,
                    "labels": score.labels,
                    "miou": s["miou"],
                    "pixel_accuracy": s["pixel_accuracy"],
                    "unpredicted_pixels": score.unpredicted,
                    "megapixels": round(score.megapixels, 4),
                    "seconds": round(score.seconds, 3),
                }
            )
        coarse = self.coarse_summary
        return {
            "model": self.model_name,
            "classes": self.classes.names,
            **self.summary,
            "coarse": {"merge": {k: list(v) for k, v in self.merge.items()}, **coarse}
            if coarse
            else None,
            "megapixels_per_second": round(self.megapixels_per_second, 4),
            "images": per_image,
            "plots": [str(p) for p in self.plots],
        }

    def table(self) -> str:
        """A text table of per-class and overall metrics (and of the merged classes)."""
        lines = _summary_table(self.summary)
        coarse = self.coarse_summary
        if coarse is not None:
            merged = "; ".join(f"{k} = {' + '.join(v)}" for k, v in self.merge.items())
            lines += ["", f"coarse classes ({merged}):", *_summary_table(coarse)]
        lines.append(
            f"images {len(self.images)}, {sum(i.megapixels for i in self.images):.2f} Mpx, "
            f"{self.megapixels_per_second:.2f} Mpx/s through the pipeline"
        )
        return "\n".join(lines)


def _summary_table(s: Mapping[str, Any]) -> list[str]:
    lines = [f"{'class':<16}{'IoU':>8}{'Dice':>8}{'recall':>8}{'pixels':>12}"]
    for name, v in s["per_class"].items():
        lines.append(
            f"{name:<16}{_cell(v['iou'])}{_cell(v['dice'])}{_cell(v['accuracy'])}{v['pixels']:>12d}"
        )
    lines += [
        f"mean IoU             {_cell(s['miou']).strip()}",
        f"mean Dice            {_cell(s['mean_dice']).strip()}",
        f"pixel accuracy       {_cell(s['pixel_accuracy']).strip()}",
        f"mean class accuracy  {_cell(s['mean_class_accuracy']).strip()}",
    ]
    return lines


def _cell(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>8.4f}"


def label_encoding_for(
    classes: ClassTable,
    label_config: str | Path | Mapping[str, Any] | None = None,
    *,
    source: str | None = None,
) -> tuple[LabelEncoding, LabelSets]:
    """How label files map to the model's classes, and the class sets some labels stand for.

    Without ``label_config``, integer labels are class ids (or, for vectors, class names) and colour
    masks use the model's display colours. A training config (its ``classes`` with
    ``mask_color``/``value`` and ``data.ignore``, or a source's own ``labels`` table) describes
    other encodings; its class names must match the model's. A config with several data sources
    needs ``source``.
    """
    if label_config is None:
        values: dict[Any, int] = {c.id: c.id for c in classes}
        values.update({c.name: c.id for c in classes})
        colors = {(r << 16) | (g << 8) | b: c.id for c in classes for r, g, b in [c.color]}
        encoding = LabelEncoding(colors, values, frozenset(), frozenset({IGNORE_INDEX}))
        return encoding, LabelSets(len(classes))
    cfg = _label_config(label_config)
    if cfg.classes.names != classes.names:
        raise InputError(
            f"the label config's classes {cfg.classes.names} differ from the model's "
            f"{classes.names}; evaluate with a config made for this model"
        )
    chosen = _source(cfg, source)
    sets = cfg.label_sets
    if chosen.labels:
        return encoding_from_labels(chosen.labels, classes, sets, list(chosen.ignore)), sets
    encoding = encoding_from_classes(cfg.class_entries, classes, list(chosen.ignore))
    return encoding, sets


def _label_config(label_config: str | Path | Mapping[str, Any]) -> TrainConfig:
    from geoseg.training.config import load_config

    return load_config(label_config)


def _source(cfg: TrainConfig, name: str | None) -> DataConfig:
    try:
        return cfg.source(name)
    except ConfigError as exc:
        raise InputError(f"{exc} with --source") from exc


def held_out_pairs(
    label_config: str | Path | Mapping[str, Any], source: str | None = None
) -> list[tuple[Path, Path]]:
    """(image, labels) paths of a training config's held-out groups (its ``val_groups``).

    The images a model trained with that config never saw: what ``geoseg evaluate --label-config
    CONFIG --source NAME`` scores when no pairs are given.
    """
    cfg = _label_config(label_config)
    chosen = _source(cfg, source)
    if chosen.source != "folders" or chosen.root is None:
        return [
            (Path(s["image"]), Path(s["labels"]))
            for s in chosen.scenes
            if Path(s["image"]).stem in chosen.val_groups
        ]
    pairs = folder_pairs(chosen.root, chosen.images, chosen.masks, chosen.pair_key)
    return [(image, mask) for group, image, mask in pairs if group in chosen.val_groups]


def read_labels(
    labels_path: str | Path,
    image_path: str | Path,
    encoding: LabelEncoding,
    *,
    class_field: str | None = None,
) -> npt.NDArray[np.uint8]:
    """Labels of ``image_path`` as class ids ``(H, W)`` uint8 (255 where unlabelled).

    Raster labels (integer ids or a colour mask, any GDAL/PIL format) must have the image's
    size; vector labels are rasterized onto the image's grid and need a georeferenced image.
    """
    try:
        return _read_labels(Path(labels_path), Path(image_path), encoding, class_field)
    except TrainingError as exc:
        # Same checks as for training data, but here the labels are the user's input.
        raise InputError(str(exc)) from exc


def _read_labels(
    labels_path: Path, image_path: Path, encoding: LabelEncoding, class_field: str | None
) -> npt.NDArray[np.uint8]:
    import rasterio

    if not labels_path.exists():
        raise InputError(f"labels {labels_path} do not exist")
    with rasterio.open(image_path) as img:
        shape, transform, crs = (img.height, img.width), img.transform, img.crs
    if labels_path.suffix.lower() in VECTOR_SUFFIXES:
        if crs is None:
            raise InputError(
                f"vector labels {labels_path} need a georeferenced image, but {image_path} has no "
                "CRS; use raster labels for plain images"
            )
        return rasterize_vector_labels(
            labels_path, shape, transform, crs, encoding, class_field=class_field
        )
    if labels_path.suffix.lower() in {".png", ".jpg", ".jpeg"}:
        from PIL import Image

        with Image.open(labels_path) as im:
            raw = np.asarray(im.convert("RGB") if im.mode in ("P", "PA", "RGBA") else im)
    else:
        with rasterio.open(labels_path) as lab:
            raw = np.moveaxis(lab.read(), 0, -1)
    if raw.shape[:2] != shape:
        raise InputError(
            f"labels {labels_path} are {raw.shape[1]}x{raw.shape[0]} px but {image_path} is "
            f"{shape[1]}x{shape[0]}; labels must cover the image pixel for pixel"
        )
    return encode_labels(raw, encoding, str(labels_path))


def evaluate(
    model: str | Path | SegmentationModel | None,
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    *,
    label_config: str | Path | Mapping[str, Any] | None = None,
    source: str | None = None,
    merge: Mapping[str, Sequence[str]] | None = None,
    class_field: str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    bands: Sequence[int] | None = None,
    tta: str | None = None,
    json_path: str | Path | None = None,
    plot_dir: str | Path | None = None,
    log: Log | None = None,
) -> EvaluationResult:
    """Segment each image with the real pipeline and score it against its labels.

    Args:
        model: A checkpoint path, a loaded model, or ``None`` for the shipped default.
        images: Image rasters (GeoTIFF, JPEG, PNG, ...); ungeoreferenced ones are accepted.
        labels: One label file per image: integer raster, colour mask, or vector polygons.
        label_config: A training config whose classes say how labels encode classes (see
            :func:`label_encoding_for`); default: class ids / display colours / class names.
        source: The data source of ``label_config`` whose label table applies (configs with
            several sources).
        merge: Coarser classes to score as well, ``{name: [legend classes]}``; default: the
            model card's ``training.coarse`` when it has one.
        class_field: The class column of vector labels.
        tile_size: Pipeline tile size (default: the model's).
        overlap: Pipeline tile overlap.
        batch_size: Tiles per forward pass.
        device: ``auto``, ``cpu``, ``cuda``.
        bands: 1-based image bands fed to the model.
        tta: Test-time augmentation, as for :func:`geoseg.segment` (``none``, ``flips``, ``d4``).
        json_path: Write the metrics here as JSON.
        plot_dir: Save ``confusion_matrix.png`` and one ``<image>_comparison.png`` per image here.
        log: Where status lines go.
    """
    from rasterio.errors import NotGeoreferencedWarning

    from geoseg.pipeline import segment

    if len(images) != len(labels):
        raise InputError(f"got {len(images)} images but {len(labels)} label files; pair them up")
    if not images:
        raise InputError("give at least one image and its labels to evaluate")
    say: Log = log or (lambda _m: None)
    seg_model = model if isinstance(model, SegmentationModel) else load_model(model)
    card = seg_model.card
    k = card.num_classes
    encoding, sets = label_encoding_for(card.classes, label_config, source=source)
    if merge is None:
        merge = dict(card.training.get("coarse") or {})
    try:
        merged_classes(card.classes.names, merge)
    except ValueError as exc:
        raise InputError(f"merge: {exc}") from exc
    total = np.zeros((k, k), dtype=np.int64)
    scores = []
    plots: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="geoseg-eval-") as tmp, warnings.catch_warnings():
        # Evaluation images are often plain JPEG/PNG tiles; pixel coordinates are fine for them.
        warnings.simplefilter("ignore", UngeoreferencedWarning)
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for i, (image, label_file) in enumerate(zip(images, labels, strict=True)):
            truth = read_labels(label_file, image, encoding, class_field=class_field)
            t0 = time.perf_counter()
            result = segment(
                image,
                Path(tmp) / f"run_{i}",
                model=seg_model,
                tile_size=tile_size,
                overlap=overlap,
                batch_size=batch_size,
                device=device,
                bands=bands,
                tta=tta,
                vectorize=False,
                preview=False,
                allow_ungeoreferenced=True,
            )
            seconds = time.perf_counter() - t0
            predicted = _read_classes(result.classes_path)
            truth = sets.resolve(truth, predicted)
            cm = seg_metrics.confusion_matrix(truth, predicted, k)
            total += cm
            missing = seg_metrics.unpredicted(truth, predicted, k)
            if missing:
                say(f"{Path(image).name}: {missing} labelled pixels got no prediction (nodata)")
            score = ImageScore(
                str(image), str(label_file), cm, truth.size / 1e6, seconds, unpredicted=missing
            )
            scores.append(score)
            s = seg_metrics.summarize(cm, card.classes.names)
            say(
                f"{Path(image).name}: mIoU {_fmt(s['miou'])}, pixel accuracy "
                f"{_fmt(s['pixel_accuracy'])} ({score.megapixels / seconds:.2f} Mpx/s)"
            )
            if plot_dir is not None:
                plots.append(
                    plot_comparison(
                        image, truth, predicted, card.classes, Path(plot_dir), bands=result.bands
                    )
                )
    evaluation = EvaluationResult(card.classes, total, tuple(scores), card.name, merge=merge)
    if plot_dir is not None:
        plots.insert(0, plot_confusion(evaluation, Path(plot_dir) / "confusion_matrix.png"))
        evaluation = dataclasses.replace(evaluation, plots=tuple(plots))
    if json_path is not None:
        path = Path(json_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(evaluation.to_dict(), indent=2))
        except OSError as exc:
            raise GeosegError(f"cannot write metrics to {path}: {exc}") from exc
    return evaluation


def _read_classes(path: Path) -> npt.NDArray[np.uint8]:
    import rasterio

    with rasterio.open(path) as ds:
        data: npt.NDArray[np.uint8] = ds.read(1)
    return data


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _colorize(label: npt.NDArray[np.uint8], classes: ClassTable) -> npt.NDArray[np.uint8]:
    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in classes:
        lut[c.id] = c.color
    out: npt.NDArray[np.uint8] = lut[label]
    return out


def plot_comparison(
    image: str | Path,
    truth: npt.NDArray[np.uint8],
    predicted: npt.NDArray[np.uint8],
    classes: ClassTable,
    out_dir: Path,
    *,
    bands: Sequence[int] = (1, 2, 3),
) -> Path:
    """Save image | labels | prediction side by side as ``<image stem>_comparison.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from geoseg.io.write import read_stretched_rgb

    rgb, _ = read_stretched_rgb(image, list(bands), truth.shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    panels = [
        (rgb, "image"),
        (_colorize(truth, classes), "labels (black: ignored)"),
        (_colorize(predicted, classes), "prediction"),
    ]
    for ax, (data, title) in zip(axes, panels, strict=True):
        ax.imshow(data, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    handles = [Patch(color=c.hex, label=c.name) for c in classes]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    out = out_dir / f"{Path(image).stem}_comparison.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(evaluation: EvaluationResult, out_path: Path) -> Path:
    """Save the row-normalised confusion matrix (recall per true class) with pixel counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = evaluation.confusion.astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    names = evaluation.classes.names
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = 1.2 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), value in np.ndenumerate(norm):
        ax.text(
            c,
            r,
            f"{value:.2f}",
            ha="center",
            va="center",
            color="white" if value > 0.5 else "black",
            fontsize=9,
        )
    miou = evaluation.summary["miou"]
    ax.set_title(f"{evaluation.model_name}\nmIoU {_fmt(miou)}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
