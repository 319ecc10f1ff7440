"""``segment_array`` on a dask-chunked DataArray against ``segment()`` on the same GeoTIFF.

The scene is a georeferenced mosaic of the real Dubai photographs (``synthetic.py``, 0.5 m: inside
the default model's training range, so ``segment()`` reads it at its own pixel size as
``segment_array`` does). Each run is a child process, so that its peak RSS (the kernel's
``ru_maxrss``, cross-checked by polling; see ``memory.py``) is its own:

- ``segment``: ``geoseg.segment`` (no preview, no vectors): reads, infers, blends and writes the
  COGs; its tile loop (``timings["tiles"]``) is reported apart from the whole call;
- ``array-N``: ``rioxarray.open_rasterio(scene, chunks=N)`` then ``segment_array`` and one
  ``dask.compute`` of ``classes`` and ``confidence`` into memory (dask's threaded scheduler).

Every child first runs one forward pass (first-call allocation is in no measurement). The
classes and confidence of every ``array-N`` run are compared with ``segment()``'s pixel for pixel.

    python benchmarks/arrays.py --size 4096            # chunks 1024 and 2048
    python benchmarks/arrays.py --size 2048 --chunks 512 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from memory import run_measured  # noqa: E402
from models import KINDS, benchmark_model, describe  # noqa: E402
from pipeline import warm_up  # noqa: E402
from synthetic import build_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def child(args: argparse.Namespace) -> int:
    """One measured run in this process; writes its timings and outputs into ``args.out``."""
    import geoseg

    model = benchmark_model(args.model)
    warm_up(model, args.tile, args.batch)
    options: dict[str, Any] = {"tile_size": args.tile, "overlap": args.overlap,
                               "batch_size": args.batch}  # fmt: skip
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.child == "segment":
        result = geoseg.segment(args.scene, out / "segment", model=model, vectorize=False,
                                preview=False, overwrite=True, **options)  # fmt: skip
        seconds = time.perf_counter() - t0
        info = {"seconds": seconds, "tiles_s": result.timings["tiles"],
                "device": result.device, "tiles": result.tiles_total}  # fmt: skip
    else:
        import dask
        import rioxarray

        chunk = int(args.child.split("-")[1])
        data = rioxarray.open_rasterio(args.scene, chunks={"band": -1, "y": chunk, "x": chunk})
        ds = geoseg.segment_array(data, model, **options)
        built = time.perf_counter() - t0
        classes, confidence = dask.compute(ds.classes.data, ds.confidence.data)
        seconds = time.perf_counter() - t0
        np.save(out / f"{args.child}_classes.npy", classes)
        np.save(out / f"{args.child}_confidence.npy", confidence)
        info = {"seconds": seconds, "graph_s": built, "tasks": len(ds.classes.data.dask)}
    (out / f"{args.child}.json").write_text(json.dumps(info))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="scene edge in pixels")
    p.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--model", choices=KINDS, default="default", help="see models.py")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    p.add_argument("--tag", default="", help="suffix of the JSON file name")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    import rasterio

    scene = build_mosaic(args.workdir / f"mosaic_{args.size}.tif", args.size)
    out = args.workdir / f"array_{args.size}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    for mode in ["segment", *(f"array-{c}" for c in args.chunks)]:
        argv_child = [
            sys.executable, __file__, "--child", mode, "--scene", str(scene), "--out", str(out),
            "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch",
            str(args.batch), "--model", args.model,
        ]  # fmt: skip
        measured = run_measured(argv_child)
        row = {"mode": mode, **measured, **json.loads((out / f"{mode}.json").read_text())}
        rows.append(row)
        print(f"{mode}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)

    with rasterio.open(out / "segment" / "classes.tif") as ds:
        ref_classes = ds.read(1)
    with rasterio.open(out / "segment" / "confidence.tif") as ds:
        ref_confidence = ds.read(1)
    base = rows[0]
    for row in rows[1:]:
        mode = row["mode"]
        row["classes_equal"] = bool(
            np.array_equal(np.load(out / f"{mode}_classes.npy"), ref_classes)
        )
        row["confidence_equal"] = bool(
            np.array_equal(np.load(out / f"{mode}_confidence.npy"), ref_confidence)
        )
    lines = [f"{'run':>12} {'seconds':>8} {'x segment':>10} {'x tile loop':>12} "
             f"{'peak RSS MB':>12} {'x segment':>10}  equal"]  # fmt: skip
    for row in rows:
        equal = "" if row is base else f"{row['classes_equal']}/{row['confidence_equal']}"
        lines.append(
            f"{row['mode']:>12} {row['seconds']:>8.1f} {row['seconds'] / base['seconds']:>10.2f} "
            f"{row['seconds'] / base['tiles_s']:>12.2f} {row['peak_rss_mb']:>12.0f} "
            f"{row['peak_rss_mb'] / base['peak_rss_mb']:>10.2f}  {equal}"
        )
    print("\n".join(lines))
    model = describe(benchmark_model(args.model))
    print(f"\n{args.size}x{args.size} px, {base['tiles']} tiles; model {model}; tile {args.tile}, "
          f"overlap {args.overlap}, batch {args.batch}; segment's tile loop "
          f"{base['tiles_s']:.1f} s of {base['seconds']:.1f} s; equal: classes/confidence "
          "identical to segment()'s")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"array_{args.size}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps({
        "settings": {"size": args.size, "tile": args.tile, "overlap": args.overlap,
                     "batch": args.batch, "model": args.model, "cpus": os.cpu_count()},
        "rows": rows,
    }, indent=2))  # fmt: skip
    print(f"wrote {path}")
    ok = all(row["classes_equal"] and row["confidence_equal"] for row in rows[1:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
