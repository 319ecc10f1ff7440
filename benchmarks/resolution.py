"""The cost of resolution-aware reading: the 5 m NAIP sample read natively and at finer sizes.

Same scene (the shipped 5 m sample), model, tile size and batch; for each ``--resolution`` it
reports the pixels the model saw, the tile-loop and total seconds, their ratio to ``native``, the
read grid, and the share of the scene labelled water next to the NDWI > 0 share (the scene has a
near-infrared band: a check on the map's lakes, not a benchmark).

    python benchmarks/resolution.py                       # native, auto (1.49 m), 0.6 m
    python benchmarks/resolution.py --resolutions native auto
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rasterio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    import geoseg
    from geoseg.cli import sample_scene_path
    from geoseg.model import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", nargs="+", default=["native", "auto", "0.6"])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--model", default=None, help="checkpoint or .onnx (default: shipped model)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    p.add_argument("--json", type=Path, default=RESULTS / "resolution.json")
    args = p.parse_args(argv)

    scene = sample_scene_path()
    with rasterio.open(scene) as ds:
        green, nir = ds.read(2).astype(np.float32), ds.read(4).astype(np.float32)
        valid = ds.read_masks(1) > 0
    ndwi_share = float(((green - nir) / np.maximum(green + nir, 1) > 0)[valid].mean())
    model = load_model(args.model)
    rows = []
    for resolution in args.resolutions:
        out = args.workdir / f"resolution_{resolution}"
        shutil.rmtree(out, ignore_errors=True)
        result = geoseg.segment(
            scene, out, model=model, tile_size=args.tile, batch_size=args.batch,
            resolution=resolution, vectorize=False, preview=False, overwrite=True,
        )  # fmt: skip
        settings = json.loads((result.out_dir / "run.json").read_text())["settings"]
        with rasterio.open(result.classes_path) as ds:
            classes = ds.read(1)
        ok = classes != 255
        water = (
            model.card.classes.names.index("water") if "water" in model.card.classes.names else -1
        )
        height, width = settings["read_grid"]
        rows.append({
            "resolution": resolution, "read_gsd": settings["read_gsd"],
            "read_px": height * width, "tiles": result.tiles_total,
            "tiles_s": result.timings["tiles"], "total_s": result.timings["total"],
            "water_share": float((classes[ok] == water).mean()) if water >= 0 else None,
        })  # fmt: skip
    base = rows[0]
    print(f"scene {scene.name}: NDWI > 0 on {ndwi_share:.1%} of the valid pixels")
    print(f"{'resolution':>10} {'read m':>7} {'Mpx':>7} {'tiles':>5} {'loop s':>7} "
          f"{'total s':>7} {'x first':>7} {'water':>6}")  # fmt: skip
    for r in rows:
        r["ratio"] = r["total_s"] / base["total_s"]
        water = f"{r['water_share']:.1%}" if r["water_share"] is not None else "-"
        print(f"{r['resolution']:>10} {r['read_gsd'] or 0:>7.3g} {r['read_px'] / 1e6:>7.2f} "
              f"{r['tiles']:>5} {r['tiles_s']:>7.1f} {r['total_s']:>7.1f} {r['ratio']:>7.2f} "
              f"{water:>6}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"scene": str(scene), "ndwi_share": ndwi_share, "model": model.card.name}
    args.json.write_text(json.dumps(summary | {"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
