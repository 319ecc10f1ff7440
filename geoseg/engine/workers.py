"""Per-worker state on a dask.distributed worker: torch's thread count and cached predictors.

Both dask engines (:mod:`geoseg.distributed` for files, :mod:`geoseg.engine.chunked` for xarray
arrays) keep one :class:`~geoseg.engine.inference.Predictor` per model and settings on each
worker through this plugin, so the tasks of a worker share one copy of the network.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.config import resolve_tta

if TYPE_CHECKING:
    from geoseg.config import InferenceConfig
    from geoseg.engine.inference import Predictor
    from geoseg.model import SegmentationModel

PLUGIN_NAME = "geoseg"


class GeosegWorkerPlugin(WorkerPlugin):
    """Per-worker state: the torch thread count and a cache of predictors (one per model).

    ``torch_threads`` is a fixed count, a ``{host: workers on that host}`` mapping (each worker
    then takes its share of the host's cores), or ``None`` to leave torch's setting alone.
    """

    name = PLUGIN_NAME

    def __init__(self, torch_threads: int | Mapping[str, int] | None = None) -> None:
        self.torch_threads = torch_threads
        self.threads: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent to workers before setup: only the settings travel, never a cache or a lock.
        return {"torch_threads": self.torch_threads, "threads": None}

    def setup(self, worker: Any) -> None:
        """Pin torch's thread count on the worker (called by dask when the plugin arrives)."""
        self._predictors: dict[tuple[str, str, str, str], Predictor] = {}
        self._lock = threading.Lock()
        wanted = self.torch_threads
        if isinstance(wanted, Mapping):
            host = str(getattr(worker, "ip", ""))
            wanted = max(1, _cpu_count() // max(1, int(wanted.get(host, 1))))
        if wanted:
            import torch

            torch.set_num_threads(int(wanted))
            self.threads = int(wanted)

    def predictor(
        self, model_key: str, model: SegmentationModel, inference: InferenceConfig
    ) -> Predictor:
        """The cached predictor for this model and settings, created on first use."""
        from geoseg.engine.inference import Predictor

        tta = resolve_tta(inference.tta, model.card.tta)
        key = (model_key, inference.device, inference.precision, tta)
        with self._lock:
            if key not in self._predictors:
                self._predictors[key] = Predictor(
                    model, inference.device, inference.precision, tta=tta
                )
            return self._predictors[key]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_plugin() -> GeosegWorkerPlugin:
    """This dask worker's geoseg plugin (set up here if its registration has not arrived)."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, GeosegWorkerPlugin):
        # The registration has not reached this worker (it joined meanwhile): set it up here.
        plugin = GeosegWorkerPlugin()
        plugin.setup(worker)
        worker.plugins[PLUGIN_NAME] = plugin
    return plugin
