"""The models of a Dask worker: each loaded once per worker process and reused by every task.

:class:`WorkerModels` is a Dask worker plugin; :func:`mtrs_geo.distributed.dask_client` registers
it on every worker of the cluster (idempotent: a worker that has it keeps its loaded models across
runs). A task asks :func:`worker_models` for a model by name and device and predicts with a copy.
Dask is imported here at once: only cluster runs import this module.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from distributed import WorkerPlugin, get_worker

from mtrs_geo.model_api import ChangeModel, load_model

PLUGIN_NAME = "mtrs-models"
CHILD_PLUGIN_NAME = "mtrs-local-child"


class WorkerModels(WorkerPlugin):
    """Models by ``(name or checkpoint folder, device)``, loaded and moved on first use."""

    idempotent = True  # registering it again leaves a worker's plugin (and its models) in place

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        self._models: dict[tuple[str, str], ChangeModel] = {}
        self._lock = threading.Lock()
        self.loads: dict[str, int] = {}  # loads in this process by "name@device" (tests)

    def setup(self, worker: Any) -> None:
        """Start with no model (models load when a task first asks)."""
        self._start()

    def __call__(self, name: str, device: str) -> ChangeModel:
        """Return the model ``name`` on ``device``, loading it the first time in this process."""
        with self._lock:  # tasks of one worker run in threads
            key = (name, device)
            if key not in self._models:
                counted = f"{name}@{device}"
                self.loads[counted] = self.loads.get(counted, 0) + 1
                self._models[key] = load_model(name, device=device)
            return self._models[key]

    def __getstate__(self) -> dict[str, Any]:
        return {}  # sent to the workers empty (a lock does not pickle)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._start()


def worker_models() -> WorkerModels:
    """Return this worker's model cache (a task's way to its models)."""
    plugin = get_worker().plugins[PLUGIN_NAME]
    assert isinstance(plugin, WorkerModels)
    return plugin


class LocalChild(WorkerPlugin):
    """Make a local cluster's worker process ignore SIGINT: Ctrl+C is the batch's to handle.

    Ctrl+C in a terminal interrupts every process of its group, the local workers with the
    batch. Interrupted, a worker would print its own tracebacks and die in the middle of a row,
    and its nanny would start it again. The batch alone takes the signal: it cancels, tells its
    workers to stop and closes the cluster. Not for a cluster the batch did not start.
    """

    idempotent = True

    def setup(self, worker: Any) -> None:
        """Ignore SIGINT in this worker process (its main thread runs the worker's loop)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
