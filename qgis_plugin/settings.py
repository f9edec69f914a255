"""The plugin's settings: Processing provider options (Processing > Options > Providers > MTRS).

The values live in QGIS's settings through ``ProcessingConfig``; the algorithm reads them here, once
per run, into a small frozen :class:`PluginSettings`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from processing.core.ProcessingConfig import ProcessingConfig, Setting
from qgis.core import QgsSettings

from .environment import find_mtrs

GROUP = "MTRS"
ENVIRONMENT = "MTRS_ENVIRONMENT"
DEVICE = "MTRS_DEVICE"
IN_PROCESS = "MTRS_IN_PROCESS"
WARM_WORKER = "MTRS_WARM_WORKER"
DEVICES = ["auto", "cpu", "cuda", "mps"]
# The engine's built-in models, offered while the environment is not probed yet (or cannot be).
BUILTIN_MODELS = ["cva", "mtrefseg-r1", "mtrefseg-r1-both-ways"]
# The model a run gets unless the user picks another: the engine's default (mtrs_geo.config), the
# bundled language model that answers the query, asked both ways in time (cva finds any change
# whatever the words).
DEFAULT_MODEL = "mtrefseg-r1-both-ways"
_MODELS_CACHE_KEY = "mtrs_geo_plugin/models_cache"


@dataclass(frozen=True)
class PluginSettings:
    """What the algorithm needs from the settings for one run."""

    environment: str  # mtrs executable or environment folder; empty: PATH
    device: str
    in_process: bool  # run the engine inside QGIS when mtrs_geo imports there
    warm_worker: bool = True  # keep one mtrs serve process with its models loaded between runs

    def mtrs_executable(self) -> Path | None:
        """Return the ``mtrs`` command these settings point to (None: not found)."""
        return find_mtrs(self.environment)


def register_settings() -> None:
    """Add the plugin's settings to Processing's options dialog and read their saved values."""
    ProcessingConfig.addSetting(
        Setting(
            GROUP,
            ENVIRONMENT,
            "mtrs-geo environment (empty: mtrs on PATH)",
            "",
            valuetype=Setting.FOLDER,
        )
    )
    ProcessingConfig.addSetting(
        Setting(
            GROUP, DEVICE, "Default device", "auto", valuetype=Setting.SELECTION, options=DEVICES
        )
    )
    ProcessingConfig.addSetting(
        Setting(GROUP, IN_PROCESS, "Run inside QGIS if mtrs_geo imports", True)
    )
    ProcessingConfig.addSetting(Setting(GROUP, WARM_WORKER, "Keep the engine warm", True))
    ProcessingConfig.readSettings()


def unregister_settings() -> None:
    """Remove the plugin's settings from Processing's options dialog."""
    for name in (ENVIRONMENT, DEVICE, IN_PROCESS, WARM_WORKER):
        ProcessingConfig.removeSetting(name)


def current_settings() -> PluginSettings:
    """Read the settings as saved now."""
    environment = ProcessingConfig.getSetting(ENVIRONMENT) or ""
    device = ProcessingConfig.getSetting(DEVICE, readable=True) or "auto"
    in_process = ProcessingConfig.getSetting(IN_PROCESS)
    warm = ProcessingConfig.getSetting(WARM_WORKER)
    return PluginSettings(
        environment=str(environment),
        device=str(device) if device in DEVICES else "auto",
        in_process=in_process is None or str(in_process).lower() == "true",
        warm_worker=warm is None or str(warm).lower() == "true",
    )


def set_environment(value: str) -> None:
    """Save the environment setting (used by the settings action and the tests)."""
    ProcessingConfig.setSettingValue(ENVIRONMENT, value)


def _executable_stamp(executable: Path) -> str:
    try:
        return f"{executable.resolve()}@{os.stat(executable).st_mtime_ns}"
    except OSError:
        return str(executable)


def cached_models(executable: Path) -> list[str] | None:
    """Model names last probed for ``executable`` (None: never probed, or the command changed)."""
    raw = QgsSettings().value(_MODELS_CACHE_KEY, "")
    try:
        cache = json.loads(str(raw or "{}"))
    except json.JSONDecodeError:
        return None
    if cache.get("executable") != _executable_stamp(executable):
        return None
    models = cache.get("models")
    return [str(name) for name in models] if isinstance(models, list) and models else None


def remember_models(executable: Path, models: list[str]) -> None:
    """Cache the model names of a probed environment, keyed by the command's path and mtime."""
    cache = {"executable": _executable_stamp(executable), "models": list(models)}
    QgsSettings().setValue(_MODELS_CACHE_KEY, json.dumps(cache))
