"""Scoring a model against labelled images through the real tiled pipeline.

``evaluate(model, images, labels)`` runs :func:`geoseg.segment` on each image (so tiling,
overlap blending, normalisation and band selection are exactly what users get), reads back
``classes.tif`` and compares it with the labels: an integer label raster, a colour-coded mask, or
vector polygons rasterized onto the image grid. Metrics come from :mod:`geoseg.training.metrics`;
the result and its tables are in :mod:`geoseg.training.scores`, the plots in
:mod:`geoseg.training.plots`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from geoseg.training.calibration import confidence_histogram
from geoseg.training.label_encoding import (
    LabelEncoding,
    encode_labels,
    encoding_from_classes,
    encoding_from_labels,
    rasterize_vector_labels,
)
from geoseg.training.label_sets import IGNORE_INDEX, LabelSets, merged_classes
from geoseg.training.plots import plot_comparison, plot_confusion, plot_reliability
from geoseg.training.scores import EvaluationResult as EvaluationResult
from geoseg.training.scores import ImageScore as ImageScore
from geoseg.training.scores import format_metric
from geoseg.types import ClassTable

if TYPE_CHECKING:
    from geoseg.training.config import DataConfig, TrainConfig

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")

Log = Callable[[str], None]


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
        tta: Test-time augmentation, as for :func:`geoseg.segment` (``none``, ``mirror``,
            ``flips``, ``d4``).
        json_path: Write the metrics here as JSON.
        plot_dir: Save ``confusion_matrix.png``, ``reliability.png`` (accuracy against
            confidence) and one ``<image>_comparison.png`` per image here.
        log: Where status lines go.
    """
    if len(images) != len(labels):
        raise InputError(f"got {len(images)} images but {len(labels)} label files; pair them up")
    if not images:
        raise InputError("give at least one image and its labels to evaluate")
    seg_model = model if isinstance(model, SegmentationModel) else load_model(model)
    card = seg_model.card
    encoding, sets = label_encoding_for(card.classes, label_config, source=source)
    merge = _checked_merge(merge, card.classes.names, card.training)
    run = _Run(
        model=seg_model,
        encoding=encoding,
        sets=sets,
        class_field=class_field,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        bands=bands,
        tta=tta,
    )
    out_dir = Path(plot_dir) if plot_dir is not None else None
    scores, plots = _score_images(run, images, labels, out_dir, log or (lambda _m: None))
    total = np.zeros((card.num_classes, card.num_classes), dtype=np.int64)
    for score in scores:
        total += score.confusion  # pixels pooled over all images
    evaluation = EvaluationResult(card.classes, total, tuple(scores), card.name, merge=merge)
    if out_dir is not None:
        plots.insert(0, plot_confusion(evaluation, out_dir / "confusion_matrix.png"))
        plots.insert(1, plot_reliability({"all": evaluation}, out_dir / "reliability.png"))
        evaluation = dataclasses.replace(evaluation, plots=tuple(plots))
    if json_path is not None:
        _write_metrics(evaluation, Path(json_path))
    return evaluation


def _checked_merge(
    merge: Mapping[str, Sequence[str]] | None,
    names: Sequence[str],
    training: Mapping[str, Any],
) -> Mapping[str, Sequence[str]]:
    """The coarse classes to score (default: the model card's ``training.coarse``), checked."""
    if merge is None:
        merge = dict(training.get("coarse") or {})
    try:
        merged_classes(names, merge)
    except ValueError as exc:
        raise InputError(f"merge: {exc}") from exc
    return merge


@dataclass(frozen=True)
class _Run:
    """What every image of one evaluation is scored with: the model, its labels, the pipeline."""

    model: SegmentationModel
    encoding: LabelEncoding
    sets: LabelSets
    class_field: str | None
    tile_size: int | None
    overlap: int | None
    batch_size: int | None
    device: str | None
    bands: Sequence[int] | None
    tta: str | None


def _score_images(
    run: _Run,
    images: Sequence[str | Path],
    labels: Sequence[str | Path],
    plot_dir: Path | None,
    say: Log,
) -> tuple[list[ImageScore], list[Path]]:
    """Each image's score, in order, and its comparison plot when ``plot_dir`` is given."""
    from rasterio.errors import NotGeoreferencedWarning

    scores = []
    plots: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="geoseg-eval-") as tmp, warnings.catch_warnings():
        # Evaluation images are often plain JPEG/PNG tiles; pixel coordinates are fine for them.
        warnings.simplefilter("ignore", UngeoreferencedWarning)
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for i, (image, label_file) in enumerate(zip(images, labels, strict=True)):
            score, plot = _score_image(
                run, image, label_file, Path(tmp) / f"run_{i}", plot_dir, say
            )
            scores.append(score)
            if plot is not None:
                plots.append(plot)
    return scores, plots


def _score_image(
    run: _Run,
    image: str | Path,
    label_file: str | Path,
    work_dir: Path,
    plot_dir: Path | None,
    say: Log,
) -> tuple[ImageScore, Path | None]:
    """Segment one image into ``work_dir``, compare it with its labels and log its metrics."""
    from geoseg.pipeline import segment

    classes = run.model.card.classes
    k = run.model.card.num_classes
    truth = read_labels(label_file, image, run.encoding, class_field=run.class_field)
    t0 = time.perf_counter()
    result = segment(
        image,
        work_dir,
        model=run.model,
        tile_size=run.tile_size,
        overlap=run.overlap,
        batch_size=run.batch_size,
        device=run.device,
        bands=run.bands,
        tta=run.tta,
        vectorize=False,
        preview=False,
        allow_ungeoreferenced=True,
    )
    seconds = time.perf_counter() - t0
    predicted = _read_band(result.classes_path)
    truth = run.sets.resolve(truth, predicted)
    cm = seg_metrics.confusion_matrix(truth, predicted, k)
    scored = (truth < k) & (predicted < k)
    confidence = confidence_histogram(
        _read_band(result.confidence_path), truth == predicted, scored
    )
    missing = seg_metrics.unpredicted(truth, predicted, k)
    if missing:
        say(f"{Path(image).name}: {missing} labelled pixels got no prediction (nodata)")
    score = ImageScore(
        str(image),
        str(label_file),
        cm,
        truth.size / 1e6,
        seconds,
        unpredicted=missing,
        confidence=confidence,
    )
    s = seg_metrics.summarize(cm, classes.names)
    say(
        f"{Path(image).name}: mIoU {format_metric(s['miou'])}, pixel accuracy "
        f"{format_metric(s['pixel_accuracy'])} ({score.megapixels / seconds:.2f} Mpx/s)"
    )
    if plot_dir is None:
        return score, None
    plot = plot_comparison(image, truth, predicted, classes, plot_dir, bands=result.bands)
    return score, plot


def _write_metrics(evaluation: EvaluationResult, path: Path) -> None:
    """Save :meth:`EvaluationResult.to_dict` as JSON, creating the folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evaluation.to_dict(), indent=2))
    except OSError as exc:
        raise GeosegError(f"cannot write metrics to {path}: {exc}") from exc


def _read_band(path: Path) -> npt.NDArray[np.uint8]:
    import rasterio

    with rasterio.open(path) as ds:
        data: npt.NDArray[np.uint8] = ds.read(1)
    return data
