"""Start-up time: process start to ``geoseg info default`` done, and to ``geoseg run``'s first tile.

Each measurement is a fresh Python process, as a user's command is. For ``geoseg run --sample``
the process records the moment of its first tile read (``TileReader.read``), measured from the
moment the parent started it (the wall clock; a process's own start time in ``/proc`` is rounded
to the second), and exits there. Prints a table and writes JSON.

    python benchmarks/startup.py [--repeats 3] [--model CHECKPOINT]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

FIRST_TILE = r"""
import os, sys, time
started = float(sys.argv[1])
import geoseg.io.read as read
def first_read(self, window):
    print(f"FIRST_TILE {time.time() - started:.3f}", flush=True)
    os._exit(0)
read.TileReader.read = first_read
from geoseg.cli import main
sys.argv = ["geoseg", "run", "--sample", "-o", sys.argv[2], "--no-vector", "-q", *sys.argv[3:]]
main()
"""


def info_seconds() -> float:
    """Wall time of a whole ``geoseg info default`` process."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from geoseg.cli import main; main()", "info", "default"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def first_tile_seconds(model: str | None = None) -> float:
    """Process start to the first tile read of ``geoseg run --sample`` (``--model`` if given)."""
    extra = ["--model", model] if model else []
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", FIRST_TILE, repr(time.time()), str(Path(tmp) / "out"), *extra],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    # the reader threads may both get there before the process is gone: keep the first
    return float(re.search(r"FIRST_TILE (\d+\.\d+)", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "startup.json")
    parser.add_argument("--model", help="a checkpoint for geoseg run (default: the shipped one)")
    args = parser.parse_args()
    info, run = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        info.append(info_seconds())
        run.append(first_tile_seconds(args.model))
    rows = {
        "geoseg info default (whole process)": info,
        "geoseg run --sample (process start to first tile read)": run,
    }
    print(f"{'command':<58}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, values in rows.items():
        print(f"{name:<58}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({k: [round(v, 3) for v in vs] for k, vs in rows.items()}, indent=1)
    )


if __name__ == "__main__":
    main()
