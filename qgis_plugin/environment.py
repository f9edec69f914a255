"""Find the ``mtrs`` environment the plugin runs, and report what it holds.

Pure Python, no QGIS import. Run as a script (``python environment.py``) by the Python of another
environment, it prints that environment's report as JSON; the plugin does exactly that for the
"Check environment" action and to learn the registered model names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_TIMEOUT_SECONDS = 180.0
_EXE = ".exe" if sys.platform == "win32" else ""


class EnvironmentProblem(Exception):
    """The configured environment cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class EnvironmentReport:
    """Versions and capabilities of the environment that runs the engine."""

    mode: str  # "in-process" or "subprocess"
    executable: str  # the mtrs command, or QGIS's Python for in-process runs
    python: str
    mtrs_version: str
    torch_version: str
    cuda_available: bool
    cuda_devices: tuple[str, ...]
    models: tuple[str, ...]

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        cuda = "yes: " + ", ".join(self.cuda_devices) if self.cuda_available else "no"
        return [
            f"mode: {self.mode}",
            f"mtrs: {self.executable}",
            f"python: {self.python}",
            f"mtrs version: {self.mtrs_version}",
            f"torch version: {self.torch_version}",
            f"CUDA available: {cuda}",
            f"models: {', '.join(self.models) or '-'}",
        ]


def find_mtrs(configured: str, search_path: str | None = None) -> Path | None:
    """Locate the ``mtrs`` command.

    Args:
        configured: the plugin setting: the ``mtrs`` executable itself, or the folder of a Python
            environment (venv or conda root, or its ``bin``/``Scripts`` folder); empty to use PATH.
        search_path: PATH to search when ``configured`` is empty (None: the process's PATH).

    Returns:
        The executable, or None when it cannot be found.

    """
    text = configured.strip()
    if not text:
        found = shutil.which("mtrs", path=search_path)
        return Path(found) if found else None
    given = Path(os.path.expanduser(text))
    if given.is_file():
        return given if os.access(given, os.X_OK) else None
    if given.is_dir():
        for candidate in (
            given / "bin" / f"mtrs{_EXE}",
            given / "Scripts" / f"mtrs{_EXE}",
            given / f"mtrs{_EXE}",
        ):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def environment_python(mtrs: Path) -> Path | None:
    """Return the Python that runs ``mtrs``: its sibling in the same folder, else its shebang."""
    for name in (f"python{_EXE}", f"python3{_EXE}"):
        sibling = mtrs.parent / name
        if sibling.is_file():
            return sibling
    try:
        with open(mtrs, "rb") as script:
            first = script.readline(4096).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if first.startswith("#!"):
        interpreter = Path(first[2:].strip().split()[0])
        if interpreter.is_file() and "python" in interpreter.name:
            return interpreter
    return None


def collect_environment() -> dict[str, Any]:
    """Versions, CUDA and model names of the Python running this function (imports the engine)."""
    from mtrs_geo.serve import environment_payload  # the warm worker answers with the same

    return environment_payload()


def report_from_payload(payload: dict[str, Any], mode: str, executable: str) -> EnvironmentReport:
    """Build a report from :func:`collect_environment`'s dictionary."""
    return EnvironmentReport(
        mode=mode,
        executable=executable,
        python=str(payload.get("python", "")),
        mtrs_version=str(payload.get("mtrs_version", "unknown")),
        torch_version=str(payload.get("torch_version", "unknown")),
        cuda_available=bool(payload.get("cuda_available", False)),
        cuda_devices=tuple(str(name) for name in payload.get("cuda_devices", [])),
        models=tuple(str(name) for name in payload.get("models", [])),
    )


def probe_in_process() -> EnvironmentReport:
    """Report on this Python (in-process mode)."""
    return report_from_payload(collect_environment(), "in-process", sys.executable)


def probe_subprocess(mtrs: Path, timeout: float = PROBE_TIMEOUT_SECONDS) -> EnvironmentReport:
    """Report on the environment of ``mtrs`` by running this file with that environment's Python.

    Raises:
        EnvironmentProblem: no Python next to ``mtrs``, or the probe failed (its last error line).

    """
    python = environment_python(mtrs)
    if python is None:
        raise EnvironmentProblem(f"cannot find the Python interpreter of {mtrs}")
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(key, None)
    try:
        done = subprocess.run(
            [str(python), str(Path(__file__).resolve())],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"cannot run {python}: {exc}") from exc
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        last = errors[-1] if errors else f"exit code {done.returncode}"
        raise EnvironmentProblem(f"the environment of {mtrs} cannot import the engine: {last}")
    try:
        payload = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise EnvironmentProblem(
            f"unexpected answer from {python}: {done.stdout[-200:]!r}"
        ) from exc
    return report_from_payload(payload, "subprocess", str(mtrs))


if __name__ == "__main__":
    print(json.dumps(collect_environment()))
