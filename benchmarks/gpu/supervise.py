"""Running phases as child processes under a hard deadline, and sampling the GPU meanwhile.

Standard library only: :mod:`benchmarks.gpu.run` uses it before the packed packages are
unpacked. A phase that outlives its deadline is stopped (SIGTERM, then SIGKILL) with its whole
process group, so data-loader workers go too; what it wrote so far stays.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Seconds between SIGTERM and SIGKILL for a phase past its deadline.
GRACE_S = 5.0
QUERY = "timestamp,utilization.gpu,utilization.memory,memory.used,power.draw"


def run_phase(
    module: str,
    argv: Sequence[str],
    *,
    deadline: float,
    log_path: Path,
    env: Mapping[str, str],
) -> dict[str, Any]:
    """Run ``python -m module argv`` until it ends or ``deadline`` (epoch seconds) passes."""
    start = time.time()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # its own process group: stopped with its workers
        )
        timed_out = False
        try:
            process.wait(timeout=max(deadline - time.time(), 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(process)
    return {
        "rc": process.returncode,
        "seconds": round(time.time() - start, 1),
        "timed_out": timed_out,
        "log": str(log_path),
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class GpuSampler:
    """``nvidia-smi`` sampled every ``interval_ms`` into a CSV while the run goes on."""

    def __init__(self, path: Path, interval_ms: int = 250) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return
        command = [smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                   f"--loop-ms={interval_ms}", f"--filename={path}"]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    @property
    def available(self) -> bool:
        """Whether ``nvidia-smi`` is sampling."""
        return self.process is not None

    def stop(self) -> None:
        """End the sampling."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def samples(self) -> list[tuple[float, list[float]]]:
        """``(epoch seconds, [gpu %, memory %, memory MiB, watts])`` of every sample so far."""
        if not self.path.is_file():
            return []
        out = []
        with self.path.open() as fh:
            for row in csv.reader(fh):
                try:
                    stamp = datetime.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f")
                except (ValueError, IndexError):
                    continue  # a partial last line
                values = [_number(v) for v in row[1:5]]
                out.append((stamp.timestamp(), values + [math.nan] * (4 - len(values))))
        return out


def _number(text: str) -> float:
    """A sample's value; NaN for ``[N/A]`` or ``[Not Supported]``."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(sum(finite) / len(finite), 1) if finite else None


def _max(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else None


def window_stats(
    samples: Sequence[tuple[float, list[float]]], start: float, end: float
) -> dict[str, Any] | None:
    """GPU utilisation, memory and power over one window (None: no sample fell in it)."""
    inside = [v for t, v in samples if start <= t <= end]
    if not inside:
        return None
    return {
        "samples": len(inside),
        "gpu_util_mean": _mean([v[0] for v in inside]),
        "gpu_util_max": _max([v[0] for v in inside]),
        "memory_used_max_mib": _max([v[2] for v in inside]),
        "power_mean_w": _mean([v[3] for v in inside]),
    }


def machine() -> dict[str, Any]:
    """The machine as ``nvidia-smi`` and the OS report it (no torch)."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "disk_free_gib": round(shutil.disk_usage("/tmp").free / 2**30, 1),
    }
    smi = shutil.which("nvidia-smi")
    if smi is None:
        info["nvidia_smi"] = "not found"
        return info
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit,persistence_mode"
    done = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return info
