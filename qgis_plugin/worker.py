"""The warm engine: one ``mtrs serve --stdio`` process per environment, reused by every run.

Nothing here imports QGIS. The worker keeps its models loaded, so only the first query of a QGIS
session pays for loading them. It is started on first use, started again when it has died, and
stopped with the plugin (and when QGIS's Python exits). One request runs at a time; a run that
finds the worker busy (a second algorithm in parallel) runs as a one-shot ``mtrs detect``.
The protocol is :mod:`mtrs_geo.serve`'s.
"""

from __future__ import annotations

import atexit
import itertools
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from .runner import (
    POLL_SECONDS,
    CancelledFn,
    DetectRequest,
    LogFn,
    ProgressFn,
    RunCancelled,
    RunFailed,
    RunSummary,
    parse_event,
    progress_percent,
    start_cli,
    summary_from_json,
)

EXIT_CANCELLED = 130
STOP_GRACE_SECONDS = 5.0
# How long the worker may take to import the engine and say it is ready (seconds).
READY_TIMEOUT_SECONDS = 120.0


class WorkerDied(RunFailed):
    """The worker process ended while it was answering (it is started again on the next run)."""


class EngineWorker:
    """One long-lived ``mtrs serve --stdio`` process and the requests sent to it."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.process: subprocess.Popen[str] | None = None
        self.busy = threading.Lock()
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        self._log: LogFn | None = None
        self._ids = itertools.count(1)
        self.starts = 0  # how many processes this worker has started (restarts included)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.process is not None and self.process.poll() is None

    def _pump_stdout(self, stream: IO[str], sink: queue.Queue[dict[str, Any] | None]) -> None:
        try:
            for line in stream:
                event = parse_event(line)
                if event is not None:
                    sink.put(event)
        finally:
            sink.put(None)  # the process closed its stdout: it has ended

    def _pump_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            text = line.rstrip("\n")
            if text.strip():
                self._stderr = [*self._stderr[-19:], text]
                log = self._log
                if log is not None:
                    log(text)

    def start(self) -> None:
        """Start the process (when it is not running) and wait until it says it is ready.

        Raises:
            RunFailed: it cannot start or ends before it is ready.

        """
        if self.alive():
            return
        self.stop()
        self._events = queue.Queue()
        self._stderr = []
        self.process = start_cli([self.executable, "serve", "--stdio"], stdin=subprocess.PIPE)
        self.starts += 1
        assert self.process.stdout is not None and self.process.stderr is not None
        for target, args in (
            (self._pump_stdout, (self.process.stdout, self._events)),
            (self._pump_stderr, (self.process.stderr,)),
        ):
            threading.Thread(target=target, args=args, daemon=True).start()
        event = self._next_event(READY_TIMEOUT_SECONDS)
        if event is None or event.get("event") != "ready":
            self.stop()
            raise WorkerDied(self._death_message())

    def _next_event(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _death_message(self) -> str:
        last = self._stderr[-1].removeprefix("Error: ") if self._stderr else "no message"
        return f"the mtrs worker ({self.executable} serve) stopped: {last}"

    def _send(self, record: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(record) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise WorkerDied(self._death_message()) from exc

    def request(
        self,
        op: str,
        payload: dict[str, Any],
        on_event: Callable[[dict[str, Any]], bool],
        is_cancelled: CancelledFn,
        log: LogFn,
    ) -> dict[str, Any]:
        """Send one request and feed its events to ``on_event`` until it returns True (the end).

        A cancel (``is_cancelled()`` true) is sent once; the run's own end event follows.

        Raises:
            WorkerDied: the process ended before the request's end.

        """
        self._log = log
        try:
            self.start()
            ident = str(next(self._ids))
            self._send({"id": ident, "op": op, **payload})
            cancel_sent = False
            while True:
                if is_cancelled() and not cancel_sent:
                    self._send({"op": "cancel", "target": ident})
                    cancel_sent = True
                try:
                    event = self._events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if event is None:
                    self.stop()
                    raise WorkerDied(self._death_message())
                if str(event.get("id")) != ident:
                    continue
                if on_event(event):
                    return event
        finally:
            self._log = None

    def stop(self) -> None:
        """End the process: close its stdin (it exits after the current run), then terminate."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=STOP_GRACE_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


_WORKERS: dict[str, EngineWorker] = {}
_WORKERS_LOCK = threading.Lock()


def worker_for(executable: str) -> EngineWorker:
    """Return the warm worker of an ``mtrs`` command (made on first use)."""
    with _WORKERS_LOCK:
        worker = _WORKERS.get(executable)
        if worker is None:
            worker = _WORKERS[executable] = EngineWorker(executable)
        return worker


def stop_workers() -> None:
    """Stop every worker (the plugin's unload, and QGIS's exit)."""
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
        _WORKERS.clear()
    for worker in workers:
        worker.stop()


atexit.register(stop_workers)


def request_config(request: DetectRequest) -> dict[str, Any]:
    """Return the ``config`` of a detect request (DetectConfig fields; engine defaults left out)."""
    config: dict[str, Any] = {"before": request.before, "after": request.after}
    config |= {"query": request.query, "output": request.output, "mask_out": request.mask_out}
    for name, value in request.options().items():
        if name == "mask_type" and not request.mask_out:
            continue
        config[name] = list(value) if isinstance(value, tuple) else value
    return {name: value for name, value in config.items() if value is not None}


def run_worker(
    worker: EngineWorker,
    request: DetectRequest,
    *,
    progress: ProgressFn,
    log: LogFn,
    is_cancelled: CancelledFn,
) -> RunSummary:
    """Run one detection in the warm worker, streaming its progress.

    Raises:
        RunFailed: the engine refused the input (its one-line message), or the worker died.
        RunCancelled: the user cancelled before the engine finished.

    """
    sent = time.monotonic()

    def on_event(event: dict[str, Any]) -> bool:
        kind = event.get("event")
        if kind in ("stage", "note"):
            log(str(event.get("message", "")))
        elif kind == "start":
            log(f"{event.get('tiles', '?')} tiles to predict")
            log(f"predicting after {time.monotonic() - sent:.1f} s")
            progress(0.0)
        elif kind == "progress":
            progress(progress_percent(int(event.get("done", 0)), int(event.get("total", 0))))
        return kind in ("done", "error")

    end = worker.request("detect", {"config": request_config(request)}, on_event, is_cancelled, log)
    if end.get("event") == "done":
        if is_cancelled():
            log("the run had finished when the cancel came: its outputs are kept")
        progress(100.0)
        return summary_from_json(end)
    if end.get("exit_code") == EXIT_CANCELLED:
        raise RunCancelled("the engine stopped: cancelled")
    raise RunFailed(str(end.get("message") or "the engine failed without a message"))


def worker_environment(worker: EngineWorker) -> dict[str, Any]:
    """Ask the worker for its environment (versions, CUDA, models); starts it when needed.

    Raises:
        RunFailed: the worker cannot start or answer.

    """
    end = worker.request("environment", {}, lambda e: True, lambda: False, lambda line: None)
    if end.get("event") != "environment":
        raise RunFailed(str(end.get("message") or "the worker did not describe its environment"))
    return end
