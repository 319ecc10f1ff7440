"""Scoring a model on every held-out group of a training config, and naming the worst.

A recipe tuned to one place fails elsewhere, so models are compared by their *worst* held-out
group: :func:`evaluate_groups` runs :func:`geoseg.training.evaluate.evaluate` (the real tiled
pipeline) on each group of each source's ``val_groups`` (whole tiles, spatial blocks, ...) and
keeps each group's metrics and calibration; :class:`GroupedEvaluation` gives the table, the
worst group, the JSON and one reliability diagram of all groups.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoseg.errors import GeosegError, InputError
from geoseg.model import SegmentationModel, load_model
from geoseg.training.config import load_config
from geoseg.training.data import folder_pairs
from geoseg.training.evaluate import Log, evaluate
from geoseg.training.scores import EvaluationResult, format_metric


@dataclass(frozen=True)
class GroupedEvaluation:
    """One :class:`EvaluationResult` per held-out group (``"source/group"``)."""

    groups: Mapping[str, EvaluationResult]
    plots: tuple[Path, ...] = ()

    @staticmethod
    def score(result: EvaluationResult) -> float:
        """The selection score of a group: its coarse mIoU where it has coarse classes."""
        summary = result.coarse_summary or result.summary
        return float(summary["miou"] or 0.0)

    @property
    def worst(self) -> str:
        """The group with the lowest score."""
        return min(self.groups, key=lambda g: self.score(self.groups[g]))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: every group's metrics, and the worst."""
        worst = self.worst
        return {
            "groups": {g: r.to_dict() for g, r in self.groups.items()},
            "worst_group": {"group": worst, "miou": round(self.score(self.groups[worst]), 4)},
            "plots": [str(p) for p in self.plots],
        }

    def table(self) -> str:
        """One line per group (mIoU, pixel accuracy, ECE, median confidences), then the worst."""
        coarse = any(r.coarse_summary for r in self.groups.values())
        head = "coarse mIoU" if coarse else "mIoU"
        lines = [
            f"{'group':<20}{head:>12}{'pixel acc.':>12}{'ECE':>8}{'conf. right':>13}"
            f"{'conf. wrong':>13}{'Mpx':>7}"
        ]
        for name, result in self.groups.items():
            summary = result.coarse_summary or result.summary
            cal = result.calibration or {}
            mpx = sum(i.megapixels for i in result.images)
            lines.append(
                f"{name:<20}{format_metric(summary['miou']):>12}"
                f"{format_metric(summary['pixel_accuracy']):>12}"
                f"{format_metric(cal.get('ece')):>8}"
                f"{format_metric(cal.get('median_confidence_right')):>13}"
                f"{format_metric(cal.get('median_confidence_wrong')):>13}{mpx:>7.2f}"
            )
        worst = self.worst
        lines.append(f"worst group: {worst} ({head} {self.score(self.groups[worst]):.4f})")
        return "\n".join(lines)


def held_out_groups(
    label_config: str | Path | Mapping[str, Any], source: str | None = None
) -> dict[tuple[str, str], list[tuple[Path, Path]]]:
    """``{(source, group): [(image, labels), ...]}`` for each held-out group of a config.

    Every source's groups, or those of ``source``. Groups are a source's ``val_groups``: first
    folders under its root, or its spatial ``blocks``.
    """
    cfg = load_config(label_config)
    sources = [cfg.source(source)] if source is not None else list(cfg.sources)
    out: dict[tuple[str, str], list[tuple[Path, Path]]] = {}
    for src in sources:
        if src.source != "folders" or src.root is None:
            for scene in src.scenes:
                stem = Path(scene["image"]).stem
                if stem in src.val_groups:
                    out[(src.name, stem)] = [(Path(scene["image"]), Path(scene["labels"]))]
            continue
        pairs = folder_pairs(src.root, src.images, src.masks, src.pair_key, src.blocks)
        for group in src.val_groups:
            out[(src.name, group)] = [(i, m) for g, i, m in pairs if g == group]
    return {key: pairs for key, pairs in out.items() if pairs}


def held_out_pairs(
    label_config: str | Path | Mapping[str, Any], source: str | None = None
) -> list[tuple[Path, Path]]:
    """(image, labels) paths of a training config's held-out groups (its ``val_groups``).

    The images a model trained with that config never saw, all groups of ``source`` (or of
    every source) together.
    """
    return [pair for pairs in held_out_groups(label_config, source).values() for pair in pairs]


def evaluate_groups(
    model: str | Path | SegmentationModel | None,
    label_config: str | Path | Mapping[str, Any],
    *,
    source: str | None = None,
    json_path: str | Path | None = None,
    plot_dir: str | Path | None = None,
    log: Log | None = None,
    **options: Any,
) -> GroupedEvaluation:
    """Score ``model`` on each held-out group of ``label_config`` through the real pipeline.

    ``options`` are :func:`~geoseg.training.evaluate.evaluate`'s (``tile_size``, ``tta``, ...).
    With ``plot_dir``, each group's plots go to a sub-folder and ``reliability.png`` there shows
    every group.

    Raises:
        InputError: when the config's held-out groups match no image.
    """
    from geoseg.training.plots import plot_reliability

    seg_model = model if isinstance(model, SegmentationModel) else load_model(model)
    groups = held_out_groups(label_config, source)
    if not groups:
        raise InputError(f"the held-out groups of {label_config} match no image")
    say = log or (lambda _m: None)
    results: dict[str, EvaluationResult] = {}
    for (src, group), pairs in groups.items():
        name = f"{src}/{group}" if src else group
        say(f"{name}: {len(pairs)} images")
        sub = Path(plot_dir) / name.replace("/", "_") if plot_dir is not None else None
        results[name] = evaluate(
            seg_model, [p[0] for p in pairs], [p[1] for p in pairs],
            label_config=label_config, source=src or None, plot_dir=sub, log=log, **options,
        )  # fmt: skip
    plots: tuple[Path, ...] = ()
    if plot_dir is not None:
        plots = (plot_reliability(results, Path(plot_dir) / "reliability.png"),)
    grouped = GroupedEvaluation(results, plots)
    if json_path is not None:
        try:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(grouped.to_dict(), indent=2))
        except OSError as exc:
            raise GeosegError(f"cannot write metrics to {json_path}: {exc}") from exc
    return grouped
