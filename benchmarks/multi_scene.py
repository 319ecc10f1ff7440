"""Several scenes: one local process versus a dask LocalCluster of 2 worker processes.

Runs the same scenes (georeferenced mosaics of the real Dubai photographs, different seeds)
three ways and compares wall times, all in one run:

- ``local``: ``geoseg.segment`` on each scene in turn, in this process (torch's default threads);
- ``many``: ``geoseg.distributed.segment_many`` on a LocalCluster of 2 worker processes, one
  scene per task (each worker pins torch to its share of the cores);
- ``split``: ``segment_distributed`` on the first scene only, split by tile rows over the same
  2 workers, against the local time of that scene; its classes.tif is compared with the local
  one pixel for pixel.

On a machine with 2 cores the workers share the cores the local run already uses through torch's
intra-op threads, so the speed-up measures the overheads (process start, model transfer, halo
rows) as much as any gain; on a cluster each worker brings its own cores or GPU.

    python benchmarks/multi_scene.py --scenes 4 --size 1024
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
import rasterio  # noqa: E402
from models import KINDS, checkpoint, describe  # noqa: E402
from synthetic import build_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", choices=KINDS, default="default", help="see models.py")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)

    import geoseg
    from geoseg.distributed import connect, segment_distributed, segment_many, summary_table
    from geoseg.model import load_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint(args.model, args.workdir)
    scenes = [
        build_mosaic(args.workdir / f"multi_{args.size}_{i}.tif", args.size, seed=100 + i)
        for i in range(args.scenes)
    ]
    out = args.workdir / "multi_out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    options: dict[str, Any] = {"tile_size": 512, "overlap": 64, "batch_size": 8,
                               "vectorize": False, "preview": False}  # fmt: skip
    model = load_model(ckpt)
    # Imports, the first forward pass and (for dask) the model transfer happen once per process:
    # both sides do them on a small scene before the clocks start, so that the comparison is
    # about the scenes themselves.
    warm = build_mosaic(args.workdir / "multi_warmup_512.tif", 512, seed=99)
    geoseg.segment(warm, out / "warm_local", model=model, **options)

    t0 = time.perf_counter()
    local_times = []
    for i, scene in enumerate(scenes):
        s0 = time.perf_counter()
        geoseg.segment(scene, out / f"local_{i}", model=model, **options)
        local_times.append(time.perf_counter() - s0)
    local = time.perf_counter() - t0
    print(f"local, one scene after another: {local:.1f} s", flush=True)

    with connect(n_workers=args.workers) as client:
        segment_many([warm] * args.workers, [out / f"warm_{i}" for i in range(args.workers)],
                     client=client, model=model, **options)  # fmt: skip
        t0 = time.perf_counter()
        outcomes = segment_many(
            scenes, [out / f"many_{i}" for i in range(len(scenes))], client=client,
            model=model, **options,
        )  # fmt: skip
        many = time.perf_counter() - t0
        print(summary_table(outcomes, many))
        t0 = time.perf_counter()
        split = segment_distributed(scenes[0], out / "split_0", client=client, model=model,
                                    **options)  # fmt: skip
        split_time = time.perf_counter() - t0

    equal = []
    for i in range(len(scenes)):
        with rasterio.open(out / f"local_{i}" / "classes.tif") as a:
            ref = a.read()
        with rasterio.open(out / f"many_{i}" / "classes.tif") as b:
            equal.append(bool(np.array_equal(ref, b.read())))
    with (
        rasterio.open(out / "local_0" / "classes.tif") as a,
        rasterio.open(split.classes_path) as b,
    ):
        split_equal = bool(np.array_equal(a.read(), b.read()))

    print()
    print(f"{args.scenes} scenes of {args.size}x{args.size} px, model {describe(model)}, "
          f"{os.cpu_count()} CPUs, {args.workers} workers")  # fmt: skip
    print(f"{'mode':<40}{'seconds':>10}{'speed-up':>10}")
    print(f"{'local, sequential':<40}{local:>10.1f}{1.0:>10.2f}")
    print(f"{'dask segment_many (scene per task)':<40}{many:>10.1f}{local / many:>10.2f}")
    print(f"{'local, scene 0':<40}{local_times[0]:>10.1f}{1.0:>10.2f}")
    print(f"{'dask segment_distributed, scene 0':<40}{split_time:>10.1f}"
          f"{local_times[0] / split_time:>10.2f}")  # fmt: skip
    print(f"classes.tif equal to local: segment_many {all(equal)}, split {split_equal}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"multi_scene{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps({
        "scenes": args.scenes, "size": args.size, "model": describe(model),
        "workers": args.workers,
        "cpus": os.cpu_count(), "local_s": local, "local_scene_s": local_times,
        "many_s": many, "split_scene0_s": split_time, "speedup_many": local / many,
        "speedup_split": local_times[0] / split_time, "equal_many": equal,
        "equal_split": split_equal, "load_avg": os.getloadavg(),
    }, indent=2))  # fmt: skip
    print(f"wrote {path}")
    shutil.rmtree(out, ignore_errors=True)
    return 0 if all(equal) and split_equal else 1


if __name__ == "__main__":
    sys.exit(main())
