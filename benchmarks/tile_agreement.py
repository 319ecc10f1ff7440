"""Does the tile size change the map? ``segment`` at tile 256 and 512, share of equal classes.

A model whose classes depend on how much context one tile gives flips classes between tile
sizes even where there is no seam. Two scenes: a georeferenced 0.5 m mosaic of the real Dubai
photographs (see synthetic.py) and the shipped 5 m NAIP sample. Same model, overlap and TTA for
both tile sizes; agreement is over valid pixels. The target (issue 28) is >= 0.98 on both.

    python benchmarks/tile_agreement.py --model default --size 2048
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from models import benchmark_model, describe  # noqa: E402
from synthetic import build_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.98


def classes_at(
    scene: Path, out: Path, model: Any, tile: int, args: argparse.Namespace
) -> np.ma.MaskedArray:
    """The class raster of ``scene`` segmented with ``tile``-pixel tiles (masked: nodata)."""
    import geoseg

    shutil.rmtree(out, ignore_errors=True)
    result = geoseg.segment(
        scene, out, model=model, tile_size=tile, overlap=args.overlap, batch_size=args.batch,
        tta=args.tta, vectorize=False, preview=False,
    )  # fmt: skip
    with rasterio.open(result.classes_path) as ds:
        classes: np.ma.MaskedArray = ds.read(1, masked=True)
    shutil.rmtree(out, ignore_errors=True)
    return classes


def agreement(a: np.ma.MaskedArray, b: np.ma.MaskedArray) -> tuple[float, int]:
    """Share of pixels valid in both with the same class, and their count."""
    valid = ~(np.ma.getmaskarray(a) | np.ma.getmaskarray(b))
    same = np.asarray(a)[valid] == np.asarray(b)[valid]
    return float(same.mean()), int(valid.sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="edge of the 0.5 m mosaic")
    p.add_argument("--tiles", type=int, nargs=2, default=[256, 512])
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tta", default="none")
    p.add_argument("--model", default="default", help="default, or a .pt/.onnx path")
    p.add_argument("--output", default="tile_agreement.json", help="file name under results/")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    args = p.parse_args(argv)

    from geoseg.cli.scenes import sample_scene_path

    model = benchmark_model(args.model)
    scenes = {
        f"dubai mosaic 0.5 m {args.size}²": build_mosaic(
            args.workdir / f"mosaic_{args.size}.tif", args.size
        ),
        "NAIP sample 5 m": Path(sample_scene_path()),
    }
    rows: list[dict[str, Any]] = []
    small, large = args.tiles
    for name, scene in scenes.items():
        a = classes_at(scene, args.workdir / "agree_a", model, small, args)
        b = classes_at(scene, args.workdir / "agree_b", model, large, args)
        share, pixels = agreement(a, b)
        rows.append({"scene": name, "tiles": [small, large], "agreement": round(share, 4),
                     "pixels": pixels, "target": TARGET, "met": share >= TARGET})  # fmt: skip
    print(f"{describe(model)}, overlap {args.overlap}, tta {args.tta}")
    print(f"{'scene':<28}{'tiles':>10}{'agreement':>11}{'target':>8}")
    for row in rows:
        tiles = f"{row['tiles'][0]}/{row['tiles'][1]}"
        print(f"{row['scene']:<28}{tiles:>10}{100 * row['agreement']:>10.2f}%"
              f"{'  met' if row['met'] else '  MISSED':>8}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / args.output
    path.write_text(json.dumps({"model": describe(model), "overlap": args.overlap,
                                "tta": args.tta, "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
