"""Run one detection for the plugin: in QGIS's own Python, or through the ``mtrs`` CLI of an env.

Nothing here imports QGIS: the algorithm passes in plain callables (progress, log, is-cancelled)
and turns :class:`RunFailed` and :class:`RunCancelled` into Processing errors. The subprocess mode
follows the CLI contract of docs/ARCHITECTURE.md: ``mtrs detect ... --progress-json`` prints one
JSON object per line (``stage``, ``start``, ``progress``, ``done`` or ``error``) and exits 0, 2
(bad input), 1 (internal error) or 130 (cancelled). The engine owns its outputs: a cancelled run
leaves the files it would have replaced as they were, and a run that got to renaming its outputs
into place finishes; the plugin never deletes an output itself.

Option defaults are the engine's: a :class:`DetectRequest` field left at None is not passed on.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ProgressFn = Callable[[float], None]  # percent in [0, 100]
LogFn = Callable[[str], None]
CancelledFn = Callable[[], bool]

# How often the subprocess loop looks at the cancel flag, and how long a cancelled CLI may take to
# clean up after SIGTERM before it is killed (seconds).
POLL_SECONDS = 0.1
TERMINATE_GRACE_SECONDS = 10.0
EXIT_CANCELLED = 130


class RunFailed(Exception):
    """The engine refused the input or failed; the message is the engine's one-line error."""


class RunCancelled(Exception):
    """The user cancelled the run; no output file was left behind."""


@dataclass(frozen=True)
class DetectRequest:
    """All options of one detection, as the algorithm collected them (paths as strings).

    Sizes are pixels of the common grid, ``min_area`` square metres, ``simplify`` metres.
    ``model`` is a registered model name or a checkpoint folder. A field left at None takes the
    engine's default (:mod:`mtrs_geo.config`), whichever way the engine runs.
    """

    before: str
    after: str
    query: str = ""
    output: str | None = None
    mask_out: str | None = None
    mask_type: str | None = None
    model: str | None = None
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    device: str | None = None
    threshold: float | None = None
    min_area: float | None = None
    simplify: float | None = None
    bands_before: tuple[int, ...] | None = None  # 1-based; None: the engine's choice
    bands_after: tuple[int, ...] | None = None
    extent: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax
    extent_crs: str | None = None  # None: the common grid's CRS
    aoi: str | None = None  # a polygon vector file: only its features are processed
    before_date: str | None = None  # ISO 8601; None: from the raster's tags
    after_date: str | None = None

    def options(self) -> dict[str, Any]:
        """Return the options given (not None), by their ``DetectConfig`` field names."""
        names = (
            "mask_type", "model", "tile_size", "overlap", "batch_size", "device", "bands_before",
            "bands_after", "extent", "extent_crs", "aoi", "before_date", "after_date",
        )  # fmt: skip
        numbers = ("threshold", "min_area", "simplify")
        given: dict[str, Any] = {
            name: getattr(self, name) for name in names if getattr(self, name) is not None
        }
        given |= {
            name: float(getattr(self, name)) for name in numbers if getattr(self, name) is not None
        }
        return given

    def outputs(self) -> list[str]:
        """Return the files this run writes."""
        return [path for path in (self.output, self.mask_out) if path]

    def cli_args(self) -> list[str]:
        """Arguments of ``mtrs detect`` for this request (without the executable)."""
        args = ["detect", self.before, self.after, "--query", self.query, "--progress-json"]
        for name, value in self.options().items():
            if name == "mask_type" and not self.mask_out:
                continue
            args += [f"--{CLI_OPTION_NAMES.get(name, name).replace('_', '-')}", cli_value(value)]
        if self.output:
            args += ["--output", self.output]
        if self.mask_out:
            args += ["--mask-out", self.mask_out]
        return args


# DetectConfig field -> ``mtrs detect`` option where the names differ.
CLI_OPTION_NAMES = {"bands_before": "bands", "bands_after": "after_bands"}


def cli_value(value: Any) -> str:
    """Return an option value as ``mtrs detect`` reads it (lists comma-separated)."""
    if isinstance(value, tuple | list):
        return ",".join(cli_value(item) for item in value)
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reports (the CLI's ``--json`` summary, or ``DetectResult.to_json()``)."""

    polygons: int | None
    tiles_total: int | None
    seconds: float | None
    raw: dict[str, Any]


def summary_from_json(payload: dict[str, Any]) -> RunSummary:
    """Pick the figures the plugin shows out of a run summary."""

    def number(key: str) -> Any:
        value = payload.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    polygons = number("polygons")
    tiles = number("tiles_total") if number("tiles_total") is not None else number("tiles")
    seconds = number("seconds")
    return RunSummary(
        polygons=int(polygons) if polygons is not None else None,
        tiles_total=int(tiles) if tiles is not None else None,
        seconds=float(seconds) if seconds is not None else None,
        raw=payload,
    )


def parse_event(line: str) -> dict[str, Any] | None:
    """Decode one ``--progress-json`` line; None when the line is not a JSON event object."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event


def progress_percent(done: int, total: int) -> float:
    """Percent of tiles done, in [0, 100] (100 when there is nothing to do)."""
    if total <= 0:
        return 100.0
    return max(0.0, min(100.0, 100.0 * done / total))


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the CLI process: QGIS's Python settings must not leak into another Python."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pump(stream: IO[str], sink: queue.Queue[tuple[str, str | None]], name: str) -> None:
    """Copy the lines of ``stream`` into ``sink``; a final ``(name, None)`` marks its end."""
    try:
        for line in stream:
            sink.put((name, line))
    finally:
        sink.put((name, None))


def start_cli(command: list[str], stdin: int) -> subprocess.Popen[str]:
    """Start the mtrs CLI with text pipes for its output (and ``stdin``) in the plugin's env.

    Raises:
        RunFailed: it cannot start.

    """
    try:
        return subprocess.Popen(
            command,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=child_environment(),
            **_popen_kwargs(),
        )
    except OSError as exc:
        raise RunFailed(f"cannot start {command[0]}: {exc.strerror or exc}") from exc


def _popen_kwargs() -> dict[str, Any]:
    """Start the CLI in its own process group so a cancel reaches every process it started."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _terminate(process: subprocess.Popen[str]) -> None:
    """Ask the CLI to stop (it removes partial outputs), kill it after a grace period."""
    if process.poll() is not None:
        return
    try:
        if sys.platform == "win32":
            process.terminate()
        else:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        if sys.platform == "win32":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _events(process: subprocess.Popen[str], is_cancelled: CancelledFn) -> Iterator[tuple[str, str]]:
    """Yield ``(stream, line)`` from the CLI's stdout and stderr until both close.

    When ``is_cancelled()`` turns true the process is asked to stop (SIGTERM, SIGKILL after a
    grace period) and the lines it still prints are yielded: it may have finished meanwhile.
    """
    assert process.stdout is not None and process.stderr is not None
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, lines, "stdout"), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, lines, "stderr"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    open_streams = len(readers)
    while open_streams:
        if is_cancelled() and process.poll() is None:
            _terminate(process)
        try:
            stream, line = lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
        else:
            yield stream, line


def _follow(
    process: subprocess.Popen[str],
    progress: ProgressFn,
    log: LogFn,
    is_cancelled: CancelledFn,
) -> tuple[str | None, RunSummary | None, list[str]]:
    """Turn the CLI's output into progress and log calls until it ends.

    Returns:
        The error event's message, the done event's summary, and the last lines of stderr.

    """
    error: str | None = None
    summary: RunSummary | None = None
    stderr_tail: list[str] = []
    try:
        for stream, line in _events(process, is_cancelled):
            text = line.rstrip("\n")
            event = parse_event(text) if stream == "stdout" else None
            if event is None:
                if text.strip():
                    if stream == "stderr":
                        stderr_tail = [*stderr_tail[-19:], text]
                    log(text)
                continue
            kind = event["event"]
            if kind == "stage":
                log(str(event.get("message", "")))
            elif kind == "start":
                log(f"{event.get('tiles', '?')} tiles to predict")
                progress(0.0)
            elif kind == "progress":
                progress(progress_percent(int(event.get("done", 0)), int(event.get("total", 0))))
            elif kind == "done":
                summary = summary_from_json(event)
                progress(100.0)
            elif kind == "error":
                error = str(event.get("message") or "").strip() or None
    finally:
        _terminate(process)  # no-op when it has exited
    return error, summary, stderr_tail


def run_cli(
    executable: str,
    request: DetectRequest,
    *,
    progress: ProgressFn,
    log: LogFn,
    is_cancelled: CancelledFn,
) -> RunSummary:
    """Run ``mtrs detect`` as a subprocess, streaming its progress.

    Args:
        executable: path of the ``mtrs`` command of the environment to use.
        request: what to detect.
        progress: receives the percent of tiles done.
        log: receives human-readable messages (tile counts, the CLI's own log lines).
        is_cancelled: polled every ``POLL_SECONDS``; when true the CLI is stopped.

    Returns:
        The run's summary.

    Raises:
        RunFailed: the CLI reported an error (its one-line message) or could not start.
        RunCancelled: the user cancelled before the engine finished; the files it would have
            replaced are as they were.

    """
    process = start_cli([executable, *request.cli_args()], stdin=subprocess.DEVNULL)

    with process:  # closes the pipes whatever happens
        error, summary, stderr_tail = _follow(process, progress, log, is_cancelled)
        code = process.wait()

    if code == 0 and summary is not None:
        if is_cancelled():
            log("the run had finished when the cancel came: its outputs are kept")
        return summary
    if code == EXIT_CANCELLED or is_cancelled():
        raise RunCancelled("the engine stopped: cancelled or interrupted")
    if code != 0 or summary is None:
        message = error or (stderr_tail[-1].removeprefix("Error: ") if stderr_tail else None)
        raise RunFailed(message or f"mtrs exited with code {code} and no message")
    return summary


def engine_importable() -> bool:
    """Tell whether ``mtrs_geo`` (and so torch) imports in this Python."""
    try:
        import mtrs_geo.pipeline  # noqa: F401
    except Exception:  # an incomplete install fails in many ways; any of them means "use the CLI"
        return False
    return True


_IN_PROCESS_MODELS: Any = None  # mtrs_geo.serve.ModelCache, made on the first in-process run


def run_in_process(
    request: DetectRequest,
    *,
    progress: ProgressFn,
    log: LogFn,
    is_cancelled: CancelledFn,
) -> RunSummary:
    """Run the engine in this Python (QGIS's own, when ``mtrs_geo`` imports there).

    The engine checks the request (:meth:`mtrs_geo.config.DetectConfig.check`, the same check as
    the CLI's) and owns its outputs: a cancel before its commit keeps the old files, one after is
    too late and the run's new files stay.

    Raises:
        RunFailed: the engine refused the input (its one-line message).
        RunCancelled: the user cancelled before the engine finished.

    """
    from mtrs_geo.config import DetectConfig
    from mtrs_geo.errors import Cancelled, MtrsError
    from mtrs_geo.pipeline import RunMessage, detect
    from mtrs_geo.serve import ModelCache

    global _IN_PROCESS_MODELS
    if _IN_PROCESS_MODELS is None:  # models stay loaded between in-process runs too
        _IN_PROCESS_MODELS = ModelCache()

    cancel = threading.Event()

    def on_progress(done: int, total: int) -> None:
        if is_cancelled():
            cancel.set()
        progress(progress_percent(done, total))

    def on_message(message: RunMessage) -> None:
        log(message.text)

    started = time.monotonic()
    try:
        config = DetectConfig(
            before=Path(request.before),
            after=Path(request.after),
            query=request.query,
            output=Path(request.output) if request.output else None,
            mask_out=Path(request.mask_out) if request.mask_out else None,
            **(request.options() | ({"aoi": Path(request.aoi)} if request.aoi else {})),
        )
        config.check()
        result = detect(
            config,
            progress=on_progress,
            cancel=cancel,
            messages=on_message,
            models=_IN_PROCESS_MODELS.on(config.device),
        )
    except Cancelled as exc:
        raise RunCancelled(str(exc) or "cancelled by the user") from exc
    except MtrsError as exc:
        raise RunFailed(str(exc)) from exc
    if is_cancelled():
        log("the run had finished when the cancel came: its outputs are kept")
    log(f"engine finished in {time.monotonic() - started:.1f} s")
    return summary_from_json(result.to_json())
