"""What every phase of the GPU run shares: its deadline, its JSON written as it goes, devices.

A phase is a child process of :mod:`benchmarks.gpu.run`: it gets an absolute ``--deadline``
(seconds since the epoch), checks :meth:`Recorder.left` before each step, records the wall-clock
windows of its measurements (the parent matches them against ``nvidia-smi`` samples) and
rewrites its JSON after every step, so whatever it finished survives a kill at the deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def phase_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every phase takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, required=True, help="where the phase's JSON goes")
    parser.add_argument("--deadline", type=float, required=True, help="epoch seconds")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder")
    parser.add_argument("--data", type=Path, help="the assembled data folder")
    parser.add_argument("--dry-run", action="store_true", help="CPU, a few tiles and steps")
    return parser


class Recorder:
    """A phase's results: a dict saved atomically to ``path`` after every change."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self.data: dict[str, Any] = {"windows": {}, "skipped": [], "errors": []}
        self.save()

    def left(self) -> float:
        """Seconds until the phase's deadline."""
        return self.deadline - time.time()

    def save(self) -> None:
        """Write the results so far (a kill leaves the last complete version)."""
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def set(self, key: str, value: Any) -> None:
        """Record ``value`` under ``key`` and save."""
        self.data[key] = value
        self.save()

    def append(self, key: str, value: Any) -> None:
        """Append ``value`` to the list under ``key`` and save."""
        self.data.setdefault(key, []).append(value)
        self.save()

    def skip(self, what: str, why: str) -> None:
        """Record a step left out (deadline, no device, ...)."""
        self.append("skipped", {"what": what, "why": why})

    @contextmanager
    def window(self, label: str) -> Iterator[None]:
        """Record the wall-clock window of the block under ``label``."""
        start = time.time()
        try:
            yield
        finally:
            self.data["windows"][label] = [start, time.time()]
            self.save()


def device_info() -> dict[str, Any]:
    """torch's view of the accelerator (or its absence) and the library versions that matter."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return info


def reset_peak() -> None:
    """Start a new peak of GPU memory (nothing on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float | None:
    """Peak GPU memory allocated by torch since :func:`reset_peak`, MiB (None on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def error_text(exc: BaseException) -> str:
    """One line for an exception: its type and the first line of its message."""
    first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"
