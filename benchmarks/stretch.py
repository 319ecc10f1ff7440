"""What ``--scale auto``'s statistics pass costs against a whole ``geoseg.segment`` run.

The scene is the synthetic 4096² mosaic of real Dubai photographs (``synthetic.py``) as 11-bit
counts (uint16, values x 8 + 50), written tiled and deflate-compressed like the 8-bit one, once
without overviews (the sample is 16 windows of 256 px) and once with them (the sample is an
overview). For each:

- ``statistics``: :func:`geoseg.io.sample.scene_stretch` alone -- metadata, sample, percentiles
  (the median of ``--repeat`` calls, file cache warm as in a run);
- ``whole-scene percentiles``: the same percentiles from every pixel, for contrast (what a
  naive implementation would read);
- ``segment``: a whole ``segment`` call with the default model (its ``timings["statistics"]`` is
  the in-run cost; ``total`` the wall time), next to the 8-bit scene's run, interleaved.

**The share is statistics / segment total**; the bar of #29 is < 5 %.

    python benchmarks/stretch.py                 # 4096², default model, 1 segment repeat
    python benchmarks/stretch.py --size 2048 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402
from synthetic import build_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def counts_copy(source: Path, target: Path, *, overviews: bool) -> Path:
    """``source`` as 11-bit counts (x 8 + 50) in uint16, block row by block row; cached."""
    if target.exists():
        return target
    with rasterio.open(source) as src:
        profile = src.profile | {"dtype": "uint16", "photometric": "MINISBLACK"}
        with rasterio.open(target, "w", **profile) as dst:
            for _, window in src.block_windows(1):
                dst.write(src.read(window=window).astype(np.uint16) * 8 + 50, window=window)
            dst.descriptions = ("red", "green", "blue")
        if overviews:
            with rasterio.open(target, "r+") as dst:
                dst.build_overviews([2, 4, 8, 16], Resampling.average)
    return target


def statistics_pass(scene: Path, repeat: int) -> dict[str, Any]:
    """The median time of ``scene_stretch`` on ``scene``, and the stretch it chose."""
    from geoseg.io.read import scene_info
    from geoseg.io.sample import scene_stretch
    from geoseg.model import load_default
    from geoseg.types import ScaleSpec

    card = load_default("cpu").card
    times, stretch = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        with rasterio.open(scene) as ds:
            info = scene_info(ds)
        stretch = scene_stretch(str(scene), info, (1, 2, 3), ScaleSpec(), card.input_spec)
        times.append(time.perf_counter() - t0)
    assert stretch is not None
    return {"seconds": statistics.median(times), "stretch": stretch.to_dict()}


def whole_scene_percentiles(scene: Path) -> float:
    """Seconds to take the 2nd/98th percentiles of every pixel (for contrast)."""
    t0 = time.perf_counter()
    with rasterio.open(scene) as ds:
        data = ds.read()
    np.percentile(data.reshape(data.shape[0], -1), (2, 98), axis=1)
    return time.perf_counter() - t0


def segment_run(scene: Path, out: Path, model: Any) -> dict[str, float]:
    """One ``segment`` call with ``model``; its timings."""
    import geoseg

    shutil.rmtree(out, ignore_errors=True)
    result = geoseg.segment(scene, out, model=model, vectorize=False, preview=False)
    shutil.rmtree(out, ignore_errors=True)
    return dict(result.timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="scene edge in pixels")
    parser.add_argument("--repeat", type=int, default=1, help="segment runs per scene")
    parser.add_argument("--stat-repeat", type=int, default=5, help="statistics passes")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    args = parser.parse_args(argv)

    from geoseg.model import load_default

    eight = build_mosaic(args.workdir / f"mosaic_{args.size}.tif", args.size)
    scenes = {
        "uint16, no overviews": counts_copy(
            eight, args.workdir / f"counts_{args.size}.tif", overviews=False
        ),
        "uint16, overviews": counts_copy(
            eight, args.workdir / f"counts_{args.size}_ovr.tif", overviews=True
        ),
    }
    model = load_default("cpu")
    rows: dict[str, dict[str, Any]] = {}
    for name, scene in scenes.items():
        rows[name] = statistics_pass(scene, args.stat_repeat)
        rows[name]["whole_scene_s"] = whole_scene_percentiles(scene)
    segment_run(eight, args.workdir / "stretch_out", model)  # warm-up: first-call costs
    runs: dict[str, list[dict[str, float]]] = {"uint8": [], **{n: [] for n in scenes}}
    for _ in range(args.repeat):  # interleaved, so that background load hits all alike
        runs["uint8"].append(segment_run(eight, args.workdir / "stretch_out", model))
        for name, scene in scenes.items():
            runs[name].append(segment_run(scene, args.workdir / "stretch_out", model))
    total = {k: statistics.median(r["total"] for r in v) for k, v in runs.items()}
    in_run = {k: statistics.median(r.get("statistics", 0.0) for r in v) for k, v in runs.items()}

    print(f"\nscene {args.size}x{args.size} px, default model {model.card.name}, CPU, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    header = (f"{'scene':<22}{'stats pass s':>13}{'in run s':>10}{'whole-scene s':>15}"
              f"{'segment s':>11}{'share':>8}  stretch")  # fmt: skip
    print(header)
    print("-" * len(header))
    print(f"{'uint8 (as it is)':<22}{'-':>13}{in_run['uint8']:>10.3f}{'-':>15}"
          f"{total['uint8']:>11.1f}{'-':>8}  none")  # fmt: skip
    for name, row in rows.items():
        share = in_run[name] / total[name]
        row.update(in_run_s=in_run[name], segment_total_s=total[name], share=share)
        stretch = row["stretch"]
        print(f"{name:<22}{row['seconds']:>13.3f}{in_run[name]:>10.3f}"
              f"{row['whole_scene_s']:>15.2f}{total[name]:>11.1f}{share:>8.2%}  "
              f"{stretch['rule']} {stretch['low'][0]:.4g}-{stretch['high'][0]:.4g} "
              f"({stretch['note']})")  # fmt: skip

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stretch_{args.size}.json"
    out.write_text(json.dumps({
        "scene": {"size": args.size, "uint8": str(eight)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg": os.getloadavg()},
        "scenes": rows, "segment_total_s": total, "segment_runs": runs,
    }, indent=2))  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
