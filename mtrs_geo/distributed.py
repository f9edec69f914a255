"""Runs on a Dask cluster: a batch's rows as tasks, or one scene split into panel tasks.

Batches: each row is one Dask task; a worker runs :func:`mtrs_geo.pipeline.detect` on its row
and reads the row's images itself (a shared path or a URL): only the row's config goes out and
its summary comes back. A worker that dies mid-row has its row run again on another worker by the
scheduler (Dask's ``allowed-failures``); the run's staged outputs (hidden scratch folder, one
commit) mean the dead worker left no file that looks finished, and the next run in that folder
removes its scratch files.

One scene (:func:`detect_on_cluster`, ``mtrs detect --scheduler``): the client opens the images'
headers, plans the grid and panels and writes the outputs; the workers read the scene samples,
predict, stitch and polygonize the panels (:mod:`mtrs_geo.panel_tasks`), reading their windows
from the shared path or URL. Only options, window plans, statistics and calibrations go out;
polygons in pixel coordinates and counts come back (a mask raster's panels go through the shared
scratch folder). The outputs equal those of one process.

Every worker loads a model once and keeps it for its later tasks and runs
(:mod:`mtrs_geo.worker_models`). Dask is imported only when a run uses it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtrs_geo.batch import BatchCancelled, BatchRow, RowOutcome, check_batch
from mtrs_geo.cancel import CANCELLED_MESSAGE, check_cancel
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import Cancelled, InputError, MtrsError
from mtrs_geo.sources import resolve_in

if TYPE_CHECKING:
    from mtrs_geo.model_api import ChangeModel, ModelInfo
    from mtrs_geo.panel_tasks import PanelResult, SceneJob, SceneSetup
    from mtrs_geo.pipeline import (
        DetectResult,
        IntervalResult,
        MessageCallback,
        ProgressCallback,
        RunPlan,
    )
    from mtrs_geo.read import RasterInfo

# Seconds to wait for a scheduler to answer, and for the first worker to join.
CONNECT_TIMEOUT_S = 30.0
# Seconds between two looks at the run's cancel flag: the client's while it waits, a worker's
# (a round trip to the scheduler) while it predicts.
CANCEL_POLL_S = 0.25
# Seconds a stopped run waits for its running tasks to see the cancel flag and return.
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Scheduler:
    """Where rows run: an existing scheduler's address, or ``workers`` local worker processes."""

    address: str | None = None
    workers: int = 0

    @property
    def is_local(self) -> bool:
        """Whether a local cluster is started for the batch."""
        return self.address is None


def parse_scheduler(text: str) -> Scheduler:
    """Read a scheduler: ``local:N`` (N worker processes here) or an address (``tcp://host:8786``).

    Raises:
        InputError: neither form.

    """
    text = text.strip()
    if text.startswith("local:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"scheduler {text!r}: local:N needs a number of workers N >= 1")
        return Scheduler(workers=int(count))
    address = text if "://" in text else f"tcp://{text}"
    host_port = address.split("://", 1)[1]
    if not host_port or ":" not in host_port:
        raise InputError(
            f"scheduler {text!r} is neither local:N nor an address such as tcp://host:8786"
        )
    return Scheduler(address=address)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[list[int]]:
    """Keep SIGINT for the end of the block: then this process's handler gets it.

    Yields the list of the signals kept so far. A second Ctrl+C while the local cluster closes
    would leave it half-closed (and Dask's exit handler waiting 10 s on it). Only the main thread
    sets handlers; elsewhere the block runs as it is (and the list stays empty).
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    came: list[int] = []
    handler = signal.signal(signal.SIGINT, lambda number, frame: came.append(number))
    try:
        yield came
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)
        if came:
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start the block's worker processes with SIGINT ignored from their first instruction.

    Ctrl+C reaches a terminal's whole process group: a local worker interrupted while it starts
    prints tracebacks and fails the cluster (once started, :class:`LocalChild` keeps it quiet).
    The spawn start method runs a fresh interpreter; here a shell that ignores SIGINT first runs
    it (an ignored signal stays ignored across ``exec``). Where that launcher cannot run (a
    ``noexec`` temporary folder, not POSIX), workers start as before.
    """
    from multiprocessing import spawn

    python = spawn.get_executable()  # a str, or bytes (Python 3.11)
    with tempfile.TemporaryDirectory(prefix="mtrs-workers-") as folder:
        launcher = Path(folder) / "launch-worker"
        exe = shlex.quote(os.fsdecode(python))
        launcher.write_text(f"#!/bin/sh\ntrap '' INT\nexec {exe} \"$@\"\n")
        launcher.chmod(0o700)
        try:
            usable = (
                os.name == "posix"
                and subprocess.run(
                    [str(launcher), "-c", ""], capture_output=True, timeout=30, check=False
                ).returncode
                == 0
            )
        except (OSError, subprocess.SubprocessError):
            usable = False
        if usable:
            spawn.set_executable(str(launcher))
        try:
            yield
        finally:
            spawn.set_executable(python)


@contextlib.contextmanager
def dask_client(scheduler: Scheduler) -> Iterator[Any]:
    """Connect to the scheduler (or start a local cluster) for the block; closed at its end.

    Every worker gets the model cache (:class:`mtrs_geo.worker_models.WorkerModels`).

    Raises:
        InputError: the scheduler cannot be reached.

    """
    from dask.distributed import Client, LocalCluster

    from mtrs_geo.worker_models import CHILD_PLUGIN_NAME, PLUGIN_NAME, LocalChild, WorkerModels

    if scheduler.is_local:
        with _workers_ignore_ctrl_c():  # the batch alone takes Ctrl+C, and cancels
            with _interrupts_deferred() as came:
                try:
                    cluster = LocalCluster(
                        n_workers=scheduler.workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=":0",  # any free port: never a running cluster's
                        # Not a nanny's warning line per worker at the end, nor a worker's
                        # "Compute Failed" traceback for a task stopped by a cancel: every task
                        # error reaches the run, which reports it in one line.
                        silence_logs=logging.CRITICAL,
                    )
                except Exception:
                    if came:  # a worker interrupted in the launcher's first millisecond
                        raise Cancelled(CANCELLED_MESSAGE) from None
                    raise
            try:
                with Client(cluster) as client:
                    client.register_plugin(LocalChild(), name=CHILD_PLUGIN_NAME)
                    client.register_plugin(WorkerModels(), name=PLUGIN_NAME)
                    yield client
            finally:
                with _interrupts_deferred():  # a second Ctrl+C waits for the cluster to close
                    cluster.close()
        return
    client = _connect(str(scheduler.address))
    with client:
        client.register_plugin(WorkerModels(), name=PLUGIN_NAME)
        yield client


def _connect(address: str) -> Any:
    """Return a dask client of the scheduler at ``address``, or say it cannot be reached.

    The client connects in a thread of its own, waited for at most :data:`CONNECT_TIMEOUT_S` and
    a little more: a server that is not a Dask scheduler (a dashboard's port, a proxy) may accept
    the connection and never answer the handshake, or answer bytes dask cannot read.

    Raises:
        InputError: no Dask scheduler answered there.

    """
    from dask.distributed import Client

    found: dict[str, Any] = {}

    def connect() -> None:
        try:
            found["client"] = Client(address, timeout=CONNECT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is said as one line
            found["error"] = exc

    thread = threading.Thread(target=connect, name="mtrs-dask-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 5.0)
    if thread.is_alive():
        raise InputError(
            f"cannot reach the Dask scheduler at {address}: no Dask answer in "
            f"{CONNECT_TIMEOUT_S + 5.0:.0f} s (a Dask dashboard's port is not the scheduler's)"
        )
    error = found.get("error")
    if error is not None:
        reason = (
            "what answers there is not a Dask scheduler"
            if isinstance(error, MemoryError)
            else str(error).splitlines()[0]
            if str(error)
            else type(error).__name__
        )
        raise InputError(f"cannot reach the Dask scheduler at {address}: {reason}") from error
    return found["client"]


def _cached_models(device: str) -> Callable[[str], ChangeModel]:
    """Return a worker's models for :func:`mtrs_geo.pipeline.detect`: copies of its cached ones."""
    from mtrs_geo.worker_models import worker_models

    cache = worker_models()
    return lambda name: copy.copy(cache(name, device))


def absolute_paths(config: DetectConfig) -> DetectConfig:
    """Return ``config`` with its local paths absolute: a worker's working folder is not ours.

    Inputs (each file of a comma-separated list too), the area of interest, a checkpoint folder
    and the outputs; URLs are left as they are.
    """
    here = Path.cwd()

    def local(path: Path | None) -> Path | None:
        return None if path is None else here / path

    def image(text: Path | str) -> str:
        return resolve_in(os.fspath(text), here)

    model = str(here / config.model) if Path(config.model).is_dir() else config.model
    return replace(
        config,
        before=image(config.before),
        after=image(config.after),
        more_images=tuple(image(later) for later in config.more_images),
        aoi=local(config.aoi),
        output=local(config.output),
        mask_out=local(config.mask_out),
        model=model,
    )


ROW_NOT_RUN = "not run: the batch was cancelled"  # a row's message when it never started


def run_row(
    number: int, output: str, config: DetectConfig, cancel_name: str | None = None
) -> RowOutcome:
    """Run one row on a worker; every failure the engine reports becomes a failed outcome.

    ``cancel_name`` names the batch's Dask event: once set, a row not started does not start
    (:data:`ROW_NOT_RUN`) and a running one stops before its commit (exit code 130).
    """
    from mtrs_geo.pipeline import detect

    cancel = _WorkerCancel(cancel_name) if cancel_name else None
    if cancel is not None and cancel.is_set():
        return RowOutcome(number, output, False, Cancelled.exit_code, ROW_NOT_RUN)
    try:
        result = detect(config, cancel=cancel, models=_cached_models(config.device))
    except MtrsError as exc:
        return RowOutcome(number, output, False, exc.exit_code, str(exc))
    return RowOutcome(number, output, True, 0, "", result)


def _completed(pending: set[Any], cancel: threading.Event | None) -> Iterator[Any]:
    """Yield futures as they complete, taking each out of ``pending``; check ``cancel`` meanwhile.

    Raises:
        Cancelled: ``cancel`` was set (checked every :data:`CANCEL_POLL_S`); ``pending`` holds
            the futures still out.

    """
    from dask.distributed import wait

    while pending:
        check_cancel(cancel)
        try:
            done = wait(pending, timeout=CANCEL_POLL_S, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            continue
        for future in done:
            pending.discard(future)
            yield future


def _row_outcome(future: Any, row: BatchRow) -> RowOutcome:
    """Return the outcome a row's task returned, or a failed one where the task itself failed."""
    try:
        outcome: RowOutcome = future.result()
    except Exception as exc:  # noqa: BLE001 - a worker that died too often, say
        message = f"internal error on the cluster: {type(exc).__name__}: {exc}"
        return RowOutcome(row.number, row.output, False, 1, message)
    return outcome


def _stop_rows(
    event: Any,
    running: set[Any],
    futures: dict[Any, BatchRow],
    on_row: Callable[[RowOutcome], None],
) -> tuple[list[RowOutcome], list[int], bool]:
    """Tell the rows still out to stop; wait (a while) for their word.

    Returns:
        The rows that finished all the same (their commit had begun), reported with ``on_row``;
        the rows stopped; and whether each stopped row is known to have written nothing.

    """
    from dask.distributed import wait

    event.set()
    with contextlib.suppress(TimeoutError):
        wait(list(running), timeout=STOP_TIMEOUT_S)
    finished: list[RowOutcome] = []
    stopped: list[int] = []
    wrote_nothing = True
    for future in running:
        row = futures[future]
        if not future.done():
            stopped.append(row.number)
            wrote_nothing = False  # a worker may still be in the middle of it
            continue
        outcome = _row_outcome(future, row)
        if outcome.exit_code != Cancelled.exit_code:
            finished.append(outcome)
            on_row(outcome)
        elif outcome.message != ROW_NOT_RUN:
            stopped.append(row.number)
    return finished, stopped, wrote_nothing


def run_batch_on_cluster(
    rows: list[BatchRow],
    scheduler: Scheduler | str,
    *,
    on_row: Callable[[RowOutcome], None],
    cancel: threading.Event | None = None,
) -> list[RowOutcome]:
    """Run the rows of a batch as Dask tasks; outcomes come back as rows finish, in any order.

    Args:
        rows: the planned rows (:func:`mtrs_geo.batch.batch_configs`).
        scheduler: an address, ``local:N`` or a :class:`Scheduler`.
        on_row: called on this machine with each row's outcome as soon as it is known.
        cancel: stops the batch: rows not started never start, running rows stop before their
            commit (their old outputs are kept); a row already renaming its outputs finishes.

    Returns:
        The outcomes in row order.

    Raises:
        InputError: the rows collide, or the scheduler cannot be reached.
        BatchCancelled: ``cancel`` was set; it says which rows finished, stopped or never ran.

    """
    from dask.distributed import Event

    check_batch(rows)
    if isinstance(scheduler, str):
        scheduler = parse_scheduler(scheduler)
    outcomes: list[RowOutcome] = []
    try:
        with dask_client(scheduler) as client:
            futures: dict[Any, BatchRow] = {}
            running: set[Any] = set()
            batch_id = uuid.uuid4().hex[:8]
            event = Event(f"mtrs-cancel-batch-{batch_id}", client=client)
            try:
                for row in rows:
                    if row.config is None:
                        assert row.error is not None
                        failed = RowOutcome(row.number, row.output, False, row.error.exit_code,
                                            str(row.error))  # fmt: skip
                        outcomes.append(failed)
                        on_row(failed)
                        continue
                    check_cancel(cancel)  # a cancel while the cluster started: no row starts
                    future = client.submit(
                        run_row, row.number, row.output, absolute_paths(row.config), event.name,
                        key=f"mtrs-row-{batch_id}-{row.number}", pure=False,
                    )  # fmt: skip
                    futures[future] = row
                    running.add(future)
                for future in _completed(running, cancel):
                    outcomes.append(outcome := _row_outcome(future, futures[future]))
                    on_row(outcome)
            except Cancelled:
                late, stopped, wrote_nothing = _stop_rows(event, running, futures, on_row)
                client.cancel(list(futures))
                raise BatchCancelled(
                    rows, outcomes + late, stopped, stopped_wrote_nothing=wrote_nothing
                ) from None
            except BaseException:
                event.set()
                client.cancel(list(futures))
                raise
            finally:
                with contextlib.suppress(Exception):  # a scheduler gone: nothing left to clear
                    event.clear()  # an event nobody waits on is removed from the scheduler
    except BatchCancelled:
        raise
    except Cancelled:  # while the local cluster started: no row was submitted
        raise BatchCancelled(rows, outcomes, []) from None
    return sorted(outcomes, key=lambda outcome: outcome.number)


def detect_on_cluster(
    config: DetectConfig,
    scheduler: Scheduler | str,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    messages: MessageCallback | None = None,
) -> DetectResult:
    """Run :func:`mtrs_geo.pipeline.detect` with the scene's panels predicted on a Dask cluster.

    The outputs (polygons, attributes, mask raster) are those one process writes (see
    :mod:`mtrs_geo.panel_tasks`). The workers read the images themselves: paths must name the
    same files on every machine (shared storage) or be URLs; with a mask raster, the outputs'
    folder must be shared too (the panels' probabilities go through the run's scratch folder).
    ``progress`` is called as each panel finishes; ``result.timings`` add up the workers' seconds
    for ``read``, ``model``, ``stitch`` and ``vectorize``.

    Raises:
        InputError: bad input or options, an unreachable scheduler, a model whose calibration
            cannot be handed between processes.
        OutputError: an output could not be written (a scratch folder the workers cannot see).
        Cancelled: ``cancel`` was set before the commit; the workers stop their panels.

    """
    from mtrs_geo.pipeline import RunMessage, run_detect

    if isinstance(scheduler, str):
        scheduler = parse_scheduler(scheduler)
    config.check()  # before a cluster is started or reached
    check_cancel(cancel)
    say = messages or (lambda message: None)
    if scheduler.is_local:
        say(RunMessage("stage", f"starting {scheduler.workers} local Dask workers"))
    else:
        say(RunMessage("stage", f"connecting to the Dask scheduler at {scheduler.address}"))
    with dask_client(scheduler) as client:
        predictor = ClusterPredictor(client, cancel)
        try:
            return run_detect(absolute_paths(config), predictor, progress, cancel, messages)
        finally:
            predictor.release()


class _WorkerCancel(threading.Event):
    """A run's cancel flag as its tasks see it: the client's Dask event, polled now and then."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._looked = 0.0

    def is_set(self) -> bool:
        """Whether the client cancelled the run (asks the scheduler at most every poll period)."""
        if not super().is_set() and time.monotonic() - self._looked >= CANCEL_POLL_S:
            from dask.distributed import Event

            self._looked = time.monotonic()
            if Event(self._name).is_set():
                self.set()
        return super().is_set()


def _model_task(name: str, device: str) -> tuple[ModelInfo, str]:
    """Load the model on a worker (kept there) and describe it: its info and resolved device."""
    from mtrs_geo.panel_tasks import check_splittable
    from mtrs_geo.worker_models import worker_models

    model = worker_models()(name, device)
    check_splittable(model)
    return model.info, model.device


def _setup_task(job: SceneJob, previous: dict[str, Any] | None) -> SceneSetup:
    from mtrs_geo.panel_tasks import scene_setup
    from mtrs_geo.worker_models import worker_models

    return scene_setup(job, worker_models(), previous)


def _summary_task(job: SceneJob, setup: SceneSetup, part: int, cancel: str) -> Any:
    from mtrs_geo.panel_tasks import scene_part_summary
    from mtrs_geo.worker_models import worker_models

    return scene_part_summary(job, setup, part, worker_models(), _WorkerCancel(cancel))


def _settle_task(job: SceneJob, setup: SceneSetup, summaries: Sequence[Any]) -> SceneSetup:
    from mtrs_geo.panel_tasks import settle_scene
    from mtrs_geo.worker_models import worker_models

    return settle_scene(job, setup, summaries, worker_models())


def _panel_task(job: SceneJob, setup: SceneSetup, index: int, cancel: str) -> PanelResult:
    from mtrs_geo.panel_tasks import predict_panel
    from mtrs_geo.worker_models import worker_models

    return predict_panel(job, setup, index, worker_models(), _WorkerCancel(cancel))


class ClusterPredictor:
    """The model on a cluster's workers; each interval's panels predicted as Dask tasks.

    A :class:`mtrs_geo.pipeline.Predictor` for :func:`mtrs_geo.pipeline.run_detect`.
    """

    def __init__(self, client: Any, cancel: threading.Event | None = None) -> None:
        from dask.distributed import Event

        self.client = client
        self.cancel = cancel
        self.run_id = uuid.uuid4().hex[:8]
        self._event = Event(f"mtrs-cancel-{self.run_id}", client=client)
        self._futures: list[Any] = []
        self._calibration: dict[str, Any] | None = None  # the interval before's, for the next

    def _submit(self, task: Callable[..., Any], *args: Any, key: str) -> Any:
        future = self.client.submit(task, *args, key=f"mtrs-{key}-{self.run_id}", pure=False)
        self._futures.append(future)
        return future

    def _wait(
        self, futures: Sequence[Any], on_done: Callable[[int, Any], None] | None = None
    ) -> list[Any]:
        """Results of ``futures`` in order; ``on_done(i, result)`` as each one comes.

        Raises:
            MtrsError: a task's error (a bad input on a worker, say), or a worker that kept dying.
            Cancelled: the run's cancel flag was set; the workers are told to stop.

        """
        index = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        try:
            for future in _completed(set(futures), self.cancel):
                results[index[future.key]] = result = _task_result(future)
                if on_done is not None:
                    on_done(index[future.key], result)
        except KeyboardInterrupt:  # a second signal: stop at once, without waiting for workers
            self._event.set()
            self.close()
            raise
        except BaseException:
            self.stop()
            raise
        return results

    def stop(self) -> None:
        """Tell the workers to stop this run's tasks and wait (a while) until they did.

        A task that still wrote into the run's scratch folder while the run removes it could
        leave a file behind.
        """
        from dask.distributed import wait

        self._event.set()
        with contextlib.suppress(TimeoutError):
            wait(self._futures, timeout=STOP_TIMEOUT_S)
        self.close()

    def close(self) -> None:
        """Release the run's tasks (their results) on the cluster."""
        self.client.cancel(self._futures)
        self._futures = []

    def release(self) -> None:
        """Release the run's tasks and its cancel event (the run is over)."""
        self.close()
        self._event.clear()  # an event nobody waits on is removed from the scheduler

    def load(
        self, config: DetectConfig, check: Callable[[ModelInfo], None], say: MessageCallback
    ) -> tuple[ModelInfo, str]:
        """Load the model on a worker (each worker loads it once); check its description."""
        future = self._submit(_model_task, config.model, config.device, key="model")
        info, device = self._wait([future])[0]
        check(info)
        return info, device

    def interval(
        self, run: RunPlan, before: RasterInfo, after: RasterInfo, index: int, done_before: int
    ) -> IntervalResult:
        """Predict one pair of dates panel by panel on the workers; join and assemble here."""
        from mtrs_geo.panel_tasks import SceneJob, assemble_probability, join_panels
        from mtrs_geo.pipeline import IntervalResult, RunMessage, timed

        job = SceneJob(run.config, before, after, run.grid, run.area, index, run.scratch)
        with timed(run.timings, "setup"):
            setup = self._scene_setup(job, run)
        panels = run.tiling.panels
        workers = len(self.client.scheduler_info()["workers"])
        run.say(RunMessage("stage", f"predicting {len(panels)} panels on {workers} workers"))
        done = done_before

        def panel_done(number: int, result: PanelResult) -> None:
            nonlocal done
            done += len(panels[number].windows)
            for key, seconds in result.timings.items():
                run.timings[key] += seconds
            if run.progress is not None:
                run.progress(done, run.total)

        futures = [
            self._submit(_panel_task, job, setup, k, self._event.name, key=f"panel-{index}-{k}")
            for k in range(len(panels))
        ]
        results: list[PanelResult] = self._wait(futures, panel_done)
        with timed(run.timings, "vectorize"):
            polygons = join_panels(job, panels, results)
        paths = run.probability_paths(index)
        with timed(run.timings, "stitch"):
            for query, path in enumerate(paths):
                if path is not None:
                    parts_of = [result.rasters[query] for result in results]
                    assemble_probability(run.grid, panels, _paths(parts_of), path)
                    for part in _paths(parts_of):
                        part.unlink()
        self.close()
        return IntervalResult(
            polygons,
            paths,
            sum(result.tiles_run for result in results),
            sum(result.tiles_skipped for result in results),
        )

    def _scene_setup(self, job: SceneJob, run: RunPlan) -> SceneSetup:
        """Statistics and calibration of one interval on the workers (scene pass in parts)."""
        from mtrs_geo.pipeline import RunMessage

        index = job.interval
        run.say(RunMessage("stage", "reading scene samples on a worker"))
        setup_future = self._submit(_setup_task, job, self._calibration, key=f"setup-{index}")
        setup: SceneSetup = self._wait([setup_future])[0]
        if setup.scene_pass:
            parts = len(run.tiling.pass_panels)
            run.say(RunMessage("stage", f"first pass over the whole scene in {parts} parts"))
            summaries = [
                self._submit(
                    _summary_task, job, setup, part, self._event.name, key=f"pass-{index}-{part}"
                )
                for part in range(parts)
            ]
            settled = self._submit(_settle_task, job, setup, summaries, key=f"settle-{index}")
            setup = self._wait([settled])[0]
        self._calibration = setup.calibration
        return setup


def _paths(paths: Sequence[Path | None]) -> list[Path]:
    """Return the paths of a mask run's panel rasters (all present)."""
    return [path for path in paths if path is not None]


def _task_result(future: Any) -> Any:
    """Return a finished task's result; raise its error as the engine's (one line).

    Raises:
        MtrsError: the task raised one (re-raised as it is), or failed otherwise (a worker that
            died too often, say: exit code 1).

    """
    try:
        return future.result()
    except MtrsError:
        raise
    except Exception as exc:  # noqa: BLE001 - a worker that died too often, say
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise MtrsError(f"internal error on the cluster: {type(exc).__name__}: {message}") from exc
