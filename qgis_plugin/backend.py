"""Choose how the engine runs (inside QGIS or through the ``mtrs`` CLI) and run it.

The choice: in-process when the setting allows it and ``mtrs_geo`` imports in QGIS's Python;
otherwise the ``mtrs`` command of the configured environment (or the one on PATH).
"""

from __future__ import annotations

import importlib.util

from .environment import (
    EnvironmentProblem,
    EnvironmentReport,
    probe_in_process,
    probe_subprocess,
    report_from_payload,
)
from .runner import (
    CancelledFn,
    DetectRequest,
    LogFn,
    ProgressFn,
    RunFailed,
    RunSummary,
    engine_importable,
    run_cli,
    run_in_process,
)
from .settings import BUILTIN_MODELS, PluginSettings, cached_models, remember_models
from .worker import run_worker, worker_environment, worker_for

MODEL_PROBE_TIMEOUT_SECONDS = 60.0
NO_ENVIRONMENT = (
    "mtrs-geo was not found: install it in a Python environment and set that environment in "
    "Processing > Options > Providers > MTRS (or put its mtrs command on PATH)"
)


def engine_available_in_qgis() -> bool:
    """Cheap test (no import) of whether ``mtrs_geo`` is installed in QGIS's own Python."""
    return importlib.util.find_spec("mtrs_geo") is not None


def use_in_process(settings: PluginSettings) -> bool:
    """Whether this run goes in-process (the engine must really import, torch included)."""
    return settings.in_process and engine_available_in_qgis() and engine_importable()


def model_names(settings: PluginSettings) -> list[str]:
    """Return the registered model names of the engine the settings point to.

    In-process they come from the engine's registry; for a CLI environment from a cached probe of
    that environment (probed once per change of its ``mtrs`` command). Falls back to the built-in
    names when no environment is reachable yet, so the algorithm still loads.
    """
    if settings.in_process and engine_available_in_qgis():
        try:
            from mtrs_geo.model_api import registered_names

            return list(registered_names())
        except Exception:  # a broken in-QGIS install: fall through to the CLI environment
            pass
    executable = settings.mtrs_executable()
    if executable is None:
        return list(BUILTIN_MODELS)
    cached = cached_models(executable)
    if cached is not None:
        return cached
    try:
        models = list(probe_subprocess(executable, MODEL_PROBE_TIMEOUT_SECONDS).models)
    except EnvironmentProblem:
        models = []
    # A failed probe is remembered too, so a broken environment does not slow every dialog down;
    # "Check environment" probes again.
    models = models or list(BUILTIN_MODELS)
    remember_models(executable, models)
    return models


def check_environment(settings: PluginSettings) -> EnvironmentReport:
    """Probe the environment the next run would use (mtrs and torch versions, CUDA, models).

    Raises:
        EnvironmentProblem: no usable environment; the message says what to fix.

    """
    if use_in_process(settings):
        return probe_in_process()
    executable = settings.mtrs_executable()
    if executable is None:
        raise EnvironmentProblem(NO_ENVIRONMENT)
    worker = worker_for(str(executable)) if settings.warm_worker else None
    if worker is not None and worker.busy.acquire(blocking=False):
        # Asking the warm worker starts it: the next run finds the engine imported.
        try:
            payload = worker_environment(worker)
        except RunFailed as exc:
            raise EnvironmentProblem(str(exc)) from exc
        finally:
            worker.busy.release()
        report = report_from_payload(payload, "warm worker (mtrs serve)", str(executable))
    else:
        report = probe_subprocess(executable)
    remember_models(executable, list(report.models) or list(BUILTIN_MODELS))
    return report


def run_detection(
    request: DetectRequest,
    settings: PluginSettings,
    *,
    progress: ProgressFn,
    log: LogFn,
    is_cancelled: CancelledFn,
) -> RunSummary:
    """Run one detection in the mode the settings and the installation allow.

    Raises:
        RunFailed: no environment, or the engine refused the input (its one-line message).
        RunCancelled: the user cancelled; no output file is left.

    """
    if use_in_process(settings):
        log("running the engine inside QGIS")
        return run_in_process(request, progress=progress, log=log, is_cancelled=is_cancelled)
    executable = settings.mtrs_executable()
    if executable is None:
        raise RunFailed(NO_ENVIRONMENT)
    log(f"running {executable}")
    worker = worker_for(str(executable)) if settings.warm_worker else None
    if worker is not None and worker.busy.acquire(blocking=False):
        try:
            fresh = not worker.alive()
            log("starting the warm worker" if fresh else "the warm worker has the engine loaded")
            return run_worker(
                worker, request, progress=progress, log=log, is_cancelled=is_cancelled
            )
        finally:
            worker.busy.release()
    if worker is not None:
        log("the warm worker is busy with another run: this run starts its own engine")
    return run_cli(str(executable), request, progress=progress, log=log, is_cancelled=is_cancelled)
