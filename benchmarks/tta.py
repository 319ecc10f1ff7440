"""The cost of test-time augmentation: ``segment`` with each ``--tta`` (none, mirror, flips, d4).

Same scene (a georeferenced mosaic of the real Dubai photographs), model, tiles and batch size;
reports the tile-loop time of each mode, its ratio to ``none`` (expected near 2, 4 and 8: the
forward passes dominate) and the share of pixels whose class differs from ``none``.

    python benchmarks/tta.py --size 1024
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rasterio  # noqa: E402
from models import KINDS, benchmark_model, describe  # noqa: E402
from pipeline import warm_up  # noqa: E402
from synthetic import build_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--model", choices=KINDS, default="default", help="see models.py")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    args = p.parse_args(argv)

    import geoseg
    from geoseg.engine.inference import TTA_TRANSFORMS

    scene = build_mosaic(args.workdir / f"mosaic_{args.size}.tif", args.size)
    model = benchmark_model(args.model)
    warm_up(model, args.tile, args.batch)
    rows = []
    reference = None
    for mode in TTA_TRANSFORMS:
        out = args.workdir / f"tta_{mode}"
        shutil.rmtree(out, ignore_errors=True)
        result = geoseg.segment(
            scene, out, model=model, tile_size=args.tile, overlap=args.overlap,
            batch_size=args.batch, tta=mode, vectorize=False, preview=False,
        )  # fmt: skip
        with rasterio.open(result.classes_path) as ds:
            classes = ds.read(1)
        if reference is None:
            reference = classes
        rows.append({
            "tta": mode, "passes": len(TTA_TRANSFORMS[mode]), "tiles_s": result.timings["tiles"],
            "inference_s": result.timings["inference"],
            "changed": float((classes != reference).mean()),
        })  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
    base = rows[0]["tiles_s"]
    print(f"scene {args.size}x{args.size}, {describe(model)}, tile "
          f"{args.tile}, overlap {args.overlap}, batch {args.batch}")  # fmt: skip
    print(f"{'tta':<8}{'passes':>7}{'tile loop s':>13}{'x none':>8}{'pixels changed':>16}")
    for row in rows:
        row["ratio"] = row["tiles_s"] / base
        print(f"{row['tta']:<8}{row['passes']:>7}{row['tiles_s']:>13.1f}{row['ratio']:>8.2f}"
              f"{100 * row['changed']:>15.2f}%")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "tta.json"
    path.write_text(json.dumps({"size": args.size, "model": describe(model), "rows": rows},
                               indent=2))  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
