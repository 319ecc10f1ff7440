"""Peak RSS of a full ``geoseg run`` (a subprocess) on scenes of growing size: it must stay flat.

Each scene is a georeferenced mosaic of the real Dubai aerial photographs (``synthetic.py``). The
run is the real command line (``geoseg run SCENE -m MODEL --tile-size 512 --overlap 64
--batch-size 8 --no-vector``), started as a child process; its peak resident set size is the
kernel's own account (``ru_maxrss`` from ``wait4`` on that child), cross-checked by polling
``psutil`` every 50 ms.

The model is a deliberately light U-Net (smp, timm's ``test_efficientnet`` encoder, decoder
channels 16-8-8-8-8, 112 k parameters, random weights) so that a 16384² scene (1369 tiles) runs
in minutes on 2 CPU cores; memory held per tile, per batch and per output row does not depend
on the model's size, and the model's own weights and activations are the same for every scene
size. ``--model resnet18`` uses the U-Net-ResNet18 instead (see ``models.py``).

    python benchmarks/memory.py                      # 4096² and 16384²
    python benchmarks/memory.py --sizes 2048 8192 --model resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import KINDS, checkpoint  # noqa: E402
from synthetic import build_mosaic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CLI = "from geoseg.cli import main; main()"


def run_measured(argv: list[str], poll: float = 0.05) -> dict[str, float]:
    """Run a command; its wall time, exit status and peak RSS (kernel and polled), in MB."""
    import subprocess

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    polled = [0]
    done = threading.Event()

    def watch() -> None:
        try:
            ps = psutil.Process(proc.pid)
            while not done.is_set():
                rss = ps.memory_info().rss
                for child in ps.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
                polled[0] = max(polled[0], rss)
                time.sleep(poll)
        except psutil.Error:
            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{output}")
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        "polled_rss_mb": polled[0] / 2**20,
        "user_cpu_s": usage.ru_utime,
        "sys_cpu_s": usage.ru_stime,
    }


def geoseg_run(scene: Path, model: Path, out: Path, tile: int, overlap: int, batch: int,
               extra: list[str] | None = None) -> dict[str, float]:  # fmt: skip
    """One ``geoseg run`` in a child process, measured."""
    argv = [
        sys.executable, "-c", CLI, "run", str(scene), "-m", str(model), "-o", str(out),
        "--tile-size", str(tile), "--overlap", str(overlap), "--batch-size", str(batch),
        "--no-vector", "--overwrite", "-q", *(extra or []),
    ]  # fmt: skip
    result = run_measured(argv)
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return result


def table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of sizes, times and peak RSS."""
    base = rows[0]["peak_rss_mb"]
    lines = [f"{'scene':>13} {'Mpx':>7} {'tiles':>6} {'wall s':>8} {'Mpx/s':>7} "
             f"{'peak RSS MB':>12} {'polled MB':>10} {'RSS / first':>12}"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r['size']:>6}x{r['size']:<6} {r['mpx']:>7.1f} {r['tiles']:>6} {r['wall_s']:>8.1f} "
            f"{r['mpx'] / r['wall_s']:>7.2f} {r['peak_rss_mb']:>12.0f} {r['polled_rss_mb']:>10.0f} "
            f"{r['peak_rss_mb'] / base:>12.2f}"
        )
    return "\n".join(lines)


def measure_sizes(args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """Build each scene, run ``geoseg run`` on it, print and save the table."""
    from geoseg.engine.tiling import make_grid

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = checkpoint(args.model, args.workdir)
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        t0 = time.perf_counter()
        scene = build_mosaic(args.workdir / f"mosaic_{size}.tif", size)
        print(f"scene {size}x{size}: {scene} ({time.perf_counter() - t0:.0f} s to build or reuse)",
              flush=True)  # fmt: skip
        grid = make_grid(size, size, args.tile, args.overlap, multiple=32)
        measured = geoseg_run(
            scene, model, args.workdir / f"{name}_out_{size}", args.tile, args.overlap,
            args.batch,
        )  # fmt: skip
        rows.append({"size": size, "mpx": size * size / 1e6, "tiles": len(grid), **measured})
        print(table(rows), flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"\nmodel {args.model}; tile {args.tile}, overlap {args.overlap}, batch {args.batch}, "
          f"--no-vector; largest/smallest peak RSS = {ratio:.2f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({
        "settings": {"tile": args.tile, "overlap": args.overlap, "batch": args.batch,
                     "model": args.model, "cpus": os.cpu_count()},
        "rows": rows, "rss_ratio_largest_smallest": ratio,
    }, indent=2))  # fmt: skip
    print(f"wrote {out}")
    return rows


def parser(description: str, sizes: list[int]) -> argparse.ArgumentParser:
    """Command-line options shared by memory.py and large_scene.py."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sizes", type=int, nargs="+", default=sizes, help="scene edges in pixels")
    p.add_argument("--model", choices=KINDS, default="light", help="see models.py")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-bench"))
    p.add_argument("--tag", default="", help="suffix of the JSON file name")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], [4096, 16384]).parse_args(argv)
    rows = measure_sizes(args, "memory")
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return 0 if ratio <= 1.3 else 1


if __name__ == "__main__":
    sys.exit(main())
