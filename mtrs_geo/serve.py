"""A warm engine for front ends: ``mtrs serve --stdio`` answers JSON lines, one model cache.

Front ends (the QGIS plugin) start it once and send one request per line on its stdin; it answers
with JSON lines on stdout, each carrying the request's ``id``:

- ``{"id": "1", "op": "detect", "config": {...}}``: a run; ``config`` holds
  :class:`~mtrs_geo.config.DetectConfig` fields (paths as text, band lists and extents as lists).
  Events: ``stage``, ``start``, ``progress``, then ``done`` (the ``--json`` summary) or ``error``
  (``message``, ``exit_code``: 2 bad input, 1 internal or output error, 130 cancelled), exactly
  as ``mtrs detect --progress-json`` prints them.
- ``{"id": "2", "op": "cancel", "target": "1"}``: cancel run ``1`` (answered by that run's end).
- ``{"id": "3", "op": "environment"}``: ``{"event": "environment", ...}``, versions, CUDA, models.
- ``{"op": "shutdown"}`` or the end of stdin: exit once the current run is done.

Models are loaded once per name and reused by every later run, so a second query on a pair
starts predicting after the pair's setup only (opening, samples, the query's encoding).
"""

from __future__ import annotations

import functools
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TextIO

from mtrs_geo.cancel import CancelSwitch
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError, MtrsError
from mtrs_geo.model_api import ChangeModel

# DetectConfig fields a request may set, by how their JSON value is read.
_PATH_FIELDS = {"before", "after", "output", "mask_out", "aoi"}
_TUPLE_FIELDS = {"bands_before", "bands_after", "extent"}
_REQUEST_FIELDS = {f.name for f in fields(DetectConfig)} - {"extra_attributes"}


def config_from_json(payload: dict[str, Any]) -> DetectConfig:
    """Build a run's :class:`DetectConfig` from a request's ``config`` object.

    Raises:
        InputError: an unknown field, or a field of the wrong kind.

    """
    unknown = sorted(set(payload) - _REQUEST_FIELDS)
    if unknown:
        raise InputError(f"unknown run option {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, value in payload.items():
        if value is None:
            continue
        if name in _PATH_FIELDS:
            values[name] = Path(str(value))
        elif name in _TUPLE_FIELDS:
            if not isinstance(value, list | tuple):
                raise InputError(f"run option {name!r} must be a list")
            values[name] = tuple(value)
        else:
            values[name] = value
    if "before" not in values or "after" not in values:
        raise InputError("a run needs a before and an after image")
    return DetectConfig(**values)


class ModelCache:
    """Models loaded once by name (or checkpoint folder) and device, reused by later runs."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str | None], ChangeModel] = {}

    def __call__(self, name: str, device: str | None = None) -> ChangeModel:
        """Return the model ``name``, loading it the first time.

        With ``device`` it is loaded for that device, in its fastest runtime there
        (:func:`mtrs_geo.model_api.load_model`: MTRefSeg-R1 on the CPU in ONNX Runtime).
        """
        key = (name, device)
        if key not in self._models:
            from mtrs_geo.model_api import load_model

            self._models[key] = load_model(name, device=device)
        return self._models[key]

    def on(self, device: str) -> Callable[[str], ChangeModel]:
        """Return the loader of this cache for runs on ``device`` (``detect``'s ``models``)."""
        return functools.partial(self, device=device)


def environment_payload() -> dict[str, Any]:
    """Return the versions, CUDA devices and model names of this Python (imports torch)."""
    import torch

    import mtrs_geo
    from mtrs_geo.model_api import registered_names

    cuda = bool(torch.cuda.is_available())
    devices = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    )
    return {
        "python": sys.executable,
        "mtrs_version": str(getattr(mtrs_geo, "__version__", "unknown")),
        "torch_version": str(torch.__version__),
        "cuda_available": cuda,
        "cuda_devices": devices,
        "models": list(registered_names()),
    }


def error_event(exc: BaseException) -> dict[str, Any]:
    """Return the ``error`` event of a failed run: its one-line message and exit code."""
    code = exc.exit_code if isinstance(exc, MtrsError) else 1
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return {"event": "error", "message": message, "exit_code": code}


class Server:
    """The request loop of ``mtrs serve --stdio`` over two text streams."""

    def __init__(self, stdin: TextIO, stdout: TextIO, models: ModelCache | None = None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.models = models or ModelCache()
        self._write_lock = threading.Lock()
        self._requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._running: tuple[str, CancelSwitch] | None = None
        self._cancelled: set[str] = set()  # cancels that came before their run started
        self._running_lock = threading.Lock()

    def send(self, record: dict[str, Any]) -> None:
        """Write one JSON line and flush it (from any thread)."""
        with self._write_lock:
            self.stdout.write(json.dumps(record, default=str) + "\n")
            self.stdout.flush()

    def _read(self) -> None:
        """Reader thread: queue requests; a cancel acts at once on the running request."""
        try:
            for line in self.stdin:
                text = line.strip()
                if not text:
                    continue
                try:
                    request = json.loads(text)
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.send({"event": "error", "message": "not a JSON object", "exit_code": 2})
                    continue
                if request.get("op") == "cancel":
                    target = str(request.get("target", ""))
                    with self._running_lock:
                        if self._running is not None and self._running[0] == target:
                            self._running[1].set()
                        else:
                            self._cancelled.add(target)
                    continue
                self._requests.put(request)
                if request.get("op") == "shutdown":
                    return
        finally:
            self._requests.put(None)

    def serve(self) -> int:
        """Answer requests until shutdown or the end of stdin; return the exit code (0)."""
        threading.Thread(target=self._read, name="mtrs-serve-stdin", daemon=True).start()
        self.send({"event": "ready"})
        while True:
            request = self._requests.get()
            if request is None or request.get("op") == "shutdown":
                return 0
            self.handle(request)

    def handle(self, request: dict[str, Any]) -> None:
        """Answer one request (every event carries its ``id``)."""
        ident = str(request.get("id", ""))

        def say(record: dict[str, Any]) -> None:
            self.send({"id": ident, **record})

        op = request.get("op")
        try:
            if op == "detect":
                self._detect(ident, request.get("config") or {}, say)
            elif op == "environment":
                say({"event": "environment", **environment_payload()})
            else:
                raise InputError(f"unknown request {op!r}")
        except (Exception, KeyboardInterrupt) as exc:  # every failure is one event, never a crash
            say(error_event(exc))

    def _detect(
        self, ident: str, payload: dict[str, Any], say: Callable[[dict[str, Any]], None]
    ) -> None:
        from mtrs_geo.errors import Cancelled
        from mtrs_geo.pipeline import RunMessage, detect

        config = config_from_json(payload)
        config.check()
        switch = CancelSwitch()
        started = time.perf_counter()
        first: list[float] = []

        def progress(done: int, total: int) -> None:
            if not first:
                first.append(time.perf_counter() - started)
                say({"event": "start", "tiles": total, "seconds": round(first[0], 3)})
            say({"event": "progress", "done": done, "total": total})

        def message(item: RunMessage) -> None:
            say({"event": "stage" if item.kind == "stage" else "note", "message": item.text})

        with self._running_lock:
            self._running = (ident, switch)
            if ident in self._cancelled:  # cancelled while it waited in the queue
                self._cancelled.discard(ident)
                switch.set()
        try:
            result = detect(config, progress, switch, message, models=self.models.on(config.device))
        except Cancelled as exc:
            say({"event": "error", "message": str(exc) or "cancelled", "exit_code": 130})
            return
        finally:
            with self._running_lock:
                self._running = None
        first_tile = first[0] if first else None
        say({"event": "done", **result.to_json(), "first_tile_seconds": first_tile})


def serve_stdio(stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the server on this process's standard streams (or the given ones)."""
    return Server(stdin or sys.stdin, stdout or sys.stdout).serve()
