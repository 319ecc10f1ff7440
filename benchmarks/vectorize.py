"""Benchmark: class raster -> GeoPackage, geoseg against the two usual baselines.

    python benchmarks/vectorize.py [--sizes 8000 4000] [--geoseg-only 16000] [--repeat 2]

For each size, a deterministic blobby 6-class raster with 0.2 % salt noise is generated
(about 100k polygons at 8000x8000, most of them the salt), then three tools run on it, each in
its own process, side by side:

- ``gdal_polygonize``: GDAL's command-line tool (Debian gdal-bin), writing a GeoPackage;
- ``plain``: what most scripts do: read the whole band, ``rasterio.features.shapes``,
  ``shapely.geometry.shape`` per feature, GeoDataFrame written with pyogrio;
- ``geoseg``: ``geoseg vectorize --workers N``, which also writes one layer per class, area and
  perimeter fields and the QGIS styles.

Each run is timed (wall clock) and its memory sampled every 50 ms over the whole process tree:
``peak_rss_mb`` sums the resident memory of all its processes (counts pages that forked workers
share once per process), ``peak_pss_mb`` sums their proportional set size (shared pages split
between the processes sharing them: the fairer figure for multi-process tools). The table is
printed and written to ``benchmarks/results/vectorize.json``. The machine is shared, so the load
average is recorded with the results; compare tools within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyogrio
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vectorize.json"
CLASSES = ["building", "land", "road", "vegetation", "water", "unlabeled"]
COLOURS = [
    (60, 16, 152),
    (132, 41, 246),
    (110, 193, 228),
    (254, 221, 58),
    (226, 169, 41),
    (155, 155, 155),
]
REFERENCE = {
    "gdal_polygonize": {"seconds": 21.9, "peak_mb": 219},
    "plain": {"seconds": 10.7, "peak_mb": 466},
}

PLAIN = """
import sys
import geopandas as gpd
import rasterio
from rasterio.features import shapes
from shapely.geometry import shape

with rasterio.open(sys.argv[1]) as ds:
    band = ds.read(1)
    transform, crs, nodata = ds.transform, ds.crs, ds.nodata
geoms, values = [], []
for geometry, value in shapes(band, mask=band != nodata, transform=transform):
    geoms.append(shape(geometry))
    values.append(int(value))
frame = gpd.GeoDataFrame({"class_id": values}, geometry=geoms, crs=crs)
frame.to_file(sys.argv[2], layer="landcover", engine="pyogrio")
"""


def make_raster(
    path: Path, size: int, *, seed: int = 0, cell: int = 160, salt: float = 0.002, block: int = 1024
) -> None:
    """Blobs: argmax of 6 smooth random fields (bilinear on a ``cell``-pixel grid), plus salt."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((len(CLASSES), size // cell + 2, size // cell + 2))
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "nodata": 255,
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5000000, 0.5, 0.5),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(COLOURS)})
        dst.update_tags(1, class_names=json.dumps(CLASSES))
        for r0 in range(0, size, block):
            y = (np.arange(r0, min(r0 + block, size)) + 0.5) / cell
            y0 = y.astype(int)
            fy = (y - y0)[:, None]
            for c0 in range(0, size, block):
                x = (np.arange(c0, min(c0 + block, size)) + 0.5) / cell
                x0 = x.astype(int)
                fx = (x - x0)[None, :]
                best = np.full((len(y), len(x)), -np.inf)
                classes = np.zeros((len(y), len(x)), dtype=np.uint8)
                for k, field in enumerate(coarse):
                    value = (field[y0][:, x0] * (1 - fx) + field[y0][:, x0 + 1] * fx) * (1 - fy) + (
                        field[y0 + 1][:, x0] * (1 - fx) + field[y0 + 1][:, x0 + 1] * fx
                    ) * fy
                    higher = value > best
                    best[higher] = value[higher]
                    classes[higher] = k
                noise_rng = np.random.default_rng([seed, r0, c0])
                noisy = noise_rng.random(classes.shape) < salt
                classes[noisy] = noise_rng.integers(0, len(CLASSES), int(noisy.sum()))
                window = ((r0, r0 + len(y)), (c0, c0 + len(x)))
                dst.write(classes, 1, window=window)


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall time and peak memory (RSS and PSS summed over the process tree) of a command."""
    started = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss = pss = 0
        try:
            family = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in family:
            try:
                full = p.memory_full_info()
                rss += full.rss
                pss += full.pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak_rss / 2**20, "peak_pss_mb": peak_pss / 2**20}


def commands(tool: str, raster: Path, out: Path, workers: int) -> list[str]:
    if tool == "gdal_polygonize":
        script = shutil.which("gdal_polygonize.py") or shutil.which("gdal_polygonize")
        if script is None:
            raise RuntimeError("gdal_polygonize not found (Debian: apt install gdal-bin)")
        return [script, "-q", "-f", "GPKG", str(raster), str(out), "landcover", "class_id"]
    if tool == "plain":
        return [sys.executable, "-c", PLAIN, str(raster), str(out)]
    if tool == "geoseg":
        cli = "from geoseg.cli import main; main()"
        return [
            sys.executable,
            "-c",
            cli,
            "vectorize",
            str(raster),
            "-o",
            str(out),
            "--workers",
            str(workers),
            "--quiet",
        ]
    raise ValueError(tool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 4000])
    parser.add_argument(
        "--geoseg-only",
        type=int,
        nargs="*",
        default=[16000],
        help="further sizes run with geoseg alone (its memory should not grow)",
    )
    parser.add_argument("--tools", nargs="+", default=["gdal_polygonize", "plain", "geoseg"])
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool; the fastest counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="where rasters and outputs go (default tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        plan = [(size, args.tools) for size in args.sizes]
        plan += [(size, ["geoseg"]) for size in args.geoseg_only if size not in args.sizes]
        for size, tools in plan:
            raster = workdir / f"classes_{size}.tif"
            if not raster.exists():
                t = time.perf_counter()
                make_raster(raster, size)
                print(f"generated {raster.name} in {time.perf_counter() - t:.1f} s", flush=True)
            for attempt in range(args.repeat):
                # interleaved, so that a burst of load on the shared machine hits every tool
                for tool in tools:
                    out = workdir / f"{tool}_{size}.gpkg"
                    out.unlink(missing_ok=True)
                    if attempt and size in args.geoseg_only:
                        continue  # one run is enough to show the memory at this size
                    result = measure(commands(tool, raster, out, args.workers), env)
                    info = pyogrio.read_info(out, layer="landcover")
                    result.update(
                        tool=tool,
                        size=size,
                        attempt=attempt,
                        polygons=int(info["features"]),
                        layers=len(pyogrio.list_layers(out)),
                        output_mb=out.stat().st_size / 2**20,
                        load=os.getloadavg()[0],
                    )
                    runs.append(result)
                    print(
                        f"  {size} {tool:16s} {result['seconds']:6.1f} s "
                        f"{result['peak_pss_mb']:6.0f} MB",
                        flush=True,
                    )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    best = {}
    for run in runs:
        key = (run["size"], run["tool"])
        if key not in best or run["seconds"] < best[key]["seconds"]:
            best[key] = run
    header = (
        f"{'size':>6} {'tool':16} {'seconds':>8} {'peak RSS MB':>12} {'peak PSS MB':>12} "
        f"{'polygons':>9} {'layers':>6} {'file MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for (size, tool), run in sorted(best.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        lines.append(
            f"{size:>6} {tool:16} {run['seconds']:8.1f} {run['peak_rss_mb']:12.0f} "
            f"{run['peak_pss_mb']:12.0f} {run['polygons']:9d} {run['layers']:6d} "
            f"{run['output_mb']:8.1f}"
        )
    table = "\n".join(lines)
    print()
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "settings": {
            "workers": args.workers,
            "repeat": args.repeat,
            "salt": 0.002,
            "classes": len(CLASSES),
        },
        "reference_from_issue_8000": REFERENCE,
        "best": [best[k] for k in sorted(best)],
        "runs": runs,
        "table": table,
    }
    RESULTS.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
