"""Fixtures of the QGIS tests: one headless QGIS per session, the staged plugin, generated scenes.

These tests run under the system Python that carries Debian's QGIS bindings (``/usr/bin/python3``);
``tests/test_qgis_plugin.py`` starts them from the project's pytest. A Python without QGIS (the
project's venv) does not collect them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
MTRS = VENV_BIN / "mtrs"
PLUGIN_FOLDER = "mtrs_geo_plugin"
QGIS_PYTHON = Path("/usr/share/qgis/python")
QGIS_PROCESSING_PLUGINS = QGIS_PYTHON / "plugins"

_SESSION_HOME = Path(tempfile.gettempdir())  # replaced below when QGIS is present

if importlib.util.find_spec("qgis") is None:
    collect_ignore_glob = ["test_*.py"]  # run by tests/test_qgis_plugin.py under QGIS's Python
else:
    # QGIS writes its profile and settings under HOME: keep them in a throw-away folder, set before
    # QGIS starts (QGIS reads these once).
    _SESSION_HOME = Path(tempfile.mkdtemp(prefix="mtrs-qgis-home-"))
    os.environ["HOME"] = str(_SESSION_HOME)
    os.environ["XDG_RUNTIME_DIR"] = str(_SESSION_HOME / "runtime")
    (_SESSION_HOME / "runtime").mkdir(mode=0o700)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SESSION_HOME.name.startswith("mtrs-qgis-home-"):
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def _module_from_file(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_plugin_module() -> Any:
    return _module_from_file("build_plugin", REPO / "scripts" / "build_plugin.py")


def make_iface() -> Any:
    """Build a test QgisInterface: the real class's spec over a real main window and canvas."""
    from qgis.gui import QgisInterface, QgsBrowserGuiModel, QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtWidgets import QMainWindow

    iface = mock.Mock(spec=QgisInterface)
    window = QMainWindow()
    iface.mainWindow.return_value = window
    iface.mapCanvas.return_value = QgsMapCanvas(window)
    iface.messageBar.return_value = QgsMessageBar(window)
    iface.browserModel.return_value = QgsBrowserGuiModel(window)
    iface.activeLayer.return_value = None
    return iface


@pytest.fixture(scope="session")
def slot_errors() -> list[BaseException]:
    """Exceptions raised inside Qt slots (PyQt would abort the process on them otherwise)."""
    errors: list[BaseException] = []

    def record(kind: type[BaseException], value: BaseException, trace: Any) -> None:
        errors.append(value)
        sys.__excepthook__(kind, value, trace)

    sys.excepthook = record
    return errors


@pytest.fixture(scope="session")
def qgis_app() -> Any:
    """The session's QgsApplication (offscreen) with a test iface and Processing initialised.

    Like QGIS itself, it sets ``qgis.utils.iface`` before Processing loads (Processing keeps the
    value it finds at import).
    """
    import qgis.utils
    from qgis.testing import start_app

    app = start_app()
    qgis.utils.iface = make_iface()
    if str(QGIS_PROCESSING_PLUGINS) not in sys.path:
        sys.path.append(str(QGIS_PROCESSING_PLUGINS))
    from processing.core.Processing import Processing

    Processing.initialize()
    return app


@pytest.fixture(scope="session")
def mtrs_executable() -> Path:
    """The project's ``mtrs`` command (the plugin runs it as a subprocess)."""
    assert MTRS.is_file(), f"{MTRS} is missing: run `make venv` first"
    return MTRS


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plugins folder with the plugin installed from the ``make plugin`` zip, the way QGIS's
    Plugin Manager installs a zip (its own ``unzip``; the plugin is the folder of metadata.txt)."""
    unzip = _module_from_file("qgis_unzip", QGIS_PYTHON / "pyplugin_installer" / "unzip.py").unzip
    archive = _build_plugin_module().build_zip(tmp_path_factory.mktemp("dist"))
    with zipfile.ZipFile(archive) as opened:
        metadata = sorted(name for name in opened.namelist() if name.endswith("metadata.txt"))
    assert metadata[0] == f"{PLUGIN_FOLDER}/metadata.txt"
    plugins = tmp_path_factory.mktemp("plugins")
    unzip(str(archive), str(plugins))
    if str(plugins) not in sys.path:
        sys.path.insert(0, str(plugins))
    return plugins


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Generated georeferenced pairs (written by the venv's Python with tests/scenes.py)."""
    out = tmp_path_factory.mktemp("scenes")
    done = subprocess.run(
        [str(VENV_BIN / "python"), str(Path(__file__).with_name("make_scenes.py")), str(out)],
        capture_output=True,
        text=True,
        check=False,
        env=_venv_environment(),
    )
    assert done.returncode == 0, done.stderr
    manifest: dict[str, Any] = json.loads(done.stdout)
    return manifest


@pytest.fixture(scope="session")
def venv_facts(mtrs_executable: Path) -> dict[str, Any]:
    """What the project's environment says about itself, asked directly (not through the plugin)."""
    code = (
        "import json, mtrs_geo, torch; from mtrs_geo.model_api import registered_names; "
        "print(json.dumps({'mtrs': mtrs_geo.__version__, 'torch': torch.__version__, "
        "'cuda': torch.cuda.is_available(), 'models': registered_names()}))"
    )
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env=_venv_environment(),
    )
    assert done.returncode == 0, done.stderr
    facts: dict[str, Any] = json.loads(done.stdout)
    return facts


def _venv_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


@pytest.fixture(scope="module")
def provider(qgis_app: Any, plugin_dir: Path, mtrs_executable: Path) -> Iterator[Any]:
    """The plugin started the way ``qgis_process`` starts it (no GUI), set to the project's mtrs."""
    from qgis.core import QgsApplication, QgsSettings

    # Set before the provider loads: the MODEL choices come from that environment.
    QgsSettings().setValue("Processing/Configuration/MTRS_ENVIRONMENT", str(mtrs_executable))
    package = importlib.import_module(PLUGIN_FOLDER)
    plugin = package.classFactory(None)
    plugin.initProcessing()
    registered = QgsApplication.processingRegistry().providerById("mtrs")
    assert registered is not None
    yield registered
    plugin.unload()
