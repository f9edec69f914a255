"""The QGIS plugin: its zip, its QGIS-free runner, and its tests in a real headless QGIS.

The QGIS tests (tests/qgis_suite/) need Debian's QGIS bindings, which live in the system Python,
not in this venv: :func:`test_plugin_in_real_headless_qgis` runs them with
``/usr/bin/python3 -m pytest``.
They skip only where QGIS is truly absent, and never in CI (``CI=true``).
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from scenes import make_pair

REPO = Path(__file__).resolve().parent.parent
PLUGIN_SOURCE = REPO / "qgis_plugin"
MTRS = REPO / ".venv" / "bin" / "mtrs"
SYSTEM_PYTHON = "/usr/bin/python3"
PLUGIN_FOLDER = "mtrs_geo_plugin"


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


runner = load_module("mtrs_qgis_runner", PLUGIN_SOURCE / "runner.py")
environment = load_module("mtrs_qgis_environment", PLUGIN_SOURCE / "environment.py")
build_plugin = load_module("mtrs_build_plugin", REPO / "scripts" / "build_plugin.py")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    return env


# ---------------------------------------------------------------------------------------------
# The plugin zip (`make plugin`)
# ---------------------------------------------------------------------------------------------


def test_make_plugin_builds_an_installable_zip_with_only_the_plugin(tmp_path: Path) -> None:
    done = subprocess.run(
        ["make", "-s", "plugin", f"DIST={tmp_path}"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("*.zip")
    assert archive.name == f"{PLUGIN_FOLDER}-0.1.0.zip"
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        metadata_text = opened.read(f"{PLUGIN_FOLDER}/metadata.txt").decode("utf-8")
    assert all(name.startswith(f"{PLUGIN_FOLDER}/") for name in names)
    inside = {name.removeprefix(f"{PLUGIN_FOLDER}/") for name in names}
    expected_sources = {p.name for p in PLUGIN_SOURCE.glob("*.py")}
    assert expected_sources <= inside
    assert {"metadata.txt", "icon.svg", "styles/changes.qml"} <= inside
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]

    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read_string(metadata_text)
    general = metadata["general"]
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["qgisMaximumVersion"] == "4.99"
    assert general["category"] == "Raster"
    assert general["hasProcessingProvider"] == "yes"
    for key in ("name", "description", "about", "version", "author", "email", "repository"):
        assert general[key].strip(), key
    for key in ("tracker", "homepage", "tags", "changelog"):
        assert general[key].strip(), key
    assert general["icon"] in inside


def test_zip_leaves_out_caches_tests_and_build_files(tmp_path: Path) -> None:
    source = tmp_path / "qgis_plugin"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
    junk = [
        "__pycache__/plugin.cpython-311.pyc",
        "tests/test_runner.py",
        "test_algorithm.py",
        "conftest.py",
        ".pytest_cache/v/cache/lastfailed",
        "build/lib/plugin.py",
        ".DS_Store",
        "runner.py.orig",
    ]
    for name in junk:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("junk")
    archive = build_plugin.build_zip(tmp_path / "dist", source)
    with zipfile.ZipFile(archive) as opened:
        inside = {
            name.removeprefix(f"{PLUGIN_FOLDER}/")
            for name in opened.namelist()
            if not name.endswith("/")  # folder entries
        }
    assert inside.isdisjoint(junk)
    assert inside == {path.as_posix() for path in build_plugin.plugin_files(source)}
    # The same sources give the same bytes.
    again = build_plugin.build_zip(tmp_path / "dist2", source)
    assert again.read_bytes() == archive.read_bytes()


def test_zip_and_every_file_in_it_are_readable_by_everyone(tmp_path: Path) -> None:
    private = tmp_path / "qgis_plugin"
    shutil.copytree(PLUGIN_SOURCE, private, ignore=shutil.ignore_patterns("__pycache__"))
    for path in private.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)  # a checkout made under umask 077
    old_umask = os.umask(0o077)
    try:
        archive = build_plugin.build_zip(tmp_path / "dist", private)
    finally:
        os.umask(old_umask)
    assert archive.stat().st_mode & 0o777 == 0o644
    with zipfile.ZipFile(archive) as opened:
        modes = {info.filename: (info.external_attr >> 16) & 0o777 for info in opened.infolist()}
    assert {mode for name, mode in modes.items() if name.endswith("/")} == {0o755}
    assert {mode for name, mode in modes.items() if not name.endswith("/")} == {0o644}
    assert f"{PLUGIN_FOLDER}/provider.svg" in modes  # the provider's own icon


# ---------------------------------------------------------------------------------------------
# The QGIS-free runner against the real mtrs CLI
# ---------------------------------------------------------------------------------------------


def test_cli_arguments_are_options_of_the_real_mtrs_detect() -> None:
    request = runner.DetectRequest(
        before="a.tif",
        after="b.tif",
        output="o.gpkg",
        mask_out="m.tif",
        bands_before=(3, 2, 1),
        bands_after=(4, 3, 2),
        extent=(1.0, 2.0, 3.0, 4.0),
        extent_crs="EPSG:32633",
        aoi="area.gpkg",
        before_date="2019-04-01",
        after_date="2021-06-30",
    )
    args = request.cli_args()
    assert args[args.index("--bands") + 1] == "3,2,1"
    assert args[args.index("--after-bands") + 1] == "4,3,2"
    assert args[args.index("--extent") + 1] == "1.0,2.0,3.0,4.0"
    help_text = subprocess.run(
        [str(MTRS), "detect", "--help"], capture_output=True, text=True, env=clean_env()
    ).stdout
    options = [arg for arg in request.cli_args() if arg.startswith("--")]
    assert options, request.cli_args()
    missing = [option for option in options if option not in help_text]
    assert missing == []


def test_run_cli_streams_progress_and_returns_the_summary(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    output = tmp_path / "changes.gpkg"
    request = runner.DetectRequest(
        before=str(pair.before),
        after=str(pair.after),
        query="new roads",
        output=str(output),
        tile_size=64,
        overlap=8,
    )
    progress: list[float] = []
    messages: list[str] = []
    summary = runner.run_cli(
        str(MTRS),
        request,
        progress=progress.append,
        log=messages.append,
        is_cancelled=lambda: False,
    )
    assert summary.polygons is not None and summary.polygons >= len(pair.changes)
    assert summary.tiles_total == 25
    assert progress[-1] == 100.0 and progress == sorted(progress) and len(progress) > 5
    assert "25 tiles to predict" in messages
    assert output.is_file()


def test_run_cli_turns_the_engine_error_into_run_failed_with_its_message(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tif"
    request = runner.DetectRequest(
        before=str(missing), after=str(missing), output=str(tmp_path / "out.gpkg")
    )
    with pytest.raises(runner.RunFailed) as raised:
        runner.run_cli(
            str(MTRS),
            request,
            progress=lambda p: None,
            log=lambda m: None,
            is_cancelled=lambda: False,
        )
    message = str(raised.value)
    assert "missing.tif" in message and "\n" not in message and "Traceback" not in message
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_the_process_and_leaves_its_outputs_to_the_engine(tmp_path: Path) -> None:
    # A command that writes its output at once, then keeps running: the cancel must stop it, and
    # the plugin must not delete a file the engine put in place (the engine alone decides whether
    # a run finished; deleting here lost both the old and the new file).
    fake = tmp_path / "slow-mtrs"
    fake.write_text(
        "#!/bin/sh\n"
        'out=""; while [ $# -gt 0 ]; do [ "$1" = --output ] && out="$2"; shift; done\n'
        'echo done > "$out"\n'
        'echo \'{"event": "start", "tiles": 9}\'\n'
        "exec sleep 30\n"
    )
    fake.chmod(0o755)
    output = tmp_path / "changes.gpkg"
    request = runner.DetectRequest(before="a.tif", after="b.tif", output=str(output))
    started = time.monotonic()
    messages: list[str] = []
    with pytest.raises(runner.RunCancelled):
        runner.run_cli(
            str(fake),
            request,
            progress=lambda p: None,
            log=messages.append,
            is_cancelled=lambda: "9 tiles to predict" in messages,
        )
    assert time.monotonic() - started < 5.0
    assert output.read_text() == "done\n"


def test_a_run_that_finished_before_the_cancel_keeps_its_outputs(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    output = tmp_path / "changes.gpkg"
    output.write_text("earlier result")
    request = runner.DetectRequest(
        before=str(pair.before), after=str(pair.after), output=str(output), tile_size=128
    )
    done: list[float] = []
    messages: list[str] = []
    # The cancel comes with the last progress event: too late, the engine finishes.
    summary = runner.run_in_process(
        request,
        progress=done.append,
        log=messages.append,
        is_cancelled=lambda: done[-1:] == [100.0],
    )
    assert summary.polygons is not None and summary.polygons > 0
    assert output.read_bytes().startswith(b"SQLite format 3")
    assert any("outputs are kept" in message for message in messages)


def test_progress_events_and_percentages() -> None:
    assert runner.parse_event('{"event": "progress", "done": 3, "total": 12}') == {
        "event": "progress",
        "done": 3,
        "total": 12,
    }
    assert runner.parse_event("Warning 1: something from GDAL") is None
    assert runner.parse_event('{"no_event": 1}') is None
    assert runner.progress_percent(3, 12) == 25.0
    assert runner.progress_percent(0, 0) == 100.0


def test_child_environment_drops_qgis_python_settings() -> None:
    env = runner.child_environment({"PYTHONPATH": "/usr/share/qgis/python", "PATH": "/usr/bin"})
    assert "PYTHONPATH" not in env and env["PATH"] == "/usr/bin"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_in_process_run_streams_progress_and_writes_the_polygons(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    output = tmp_path / "changes.fgb"
    request = runner.DetectRequest(
        before=str(pair.before), after=str(pair.after), output=str(output), model="cva",
        tile_size=64, overlap=8,
    )  # fmt: skip
    progress: list[float] = []
    summary = runner.run_in_process(
        request, progress=progress.append, log=lambda m: None, is_cancelled=lambda: False
    )
    assert summary.polygons is not None and summary.polygons >= len(pair.changes)
    # cva reads the scene once, in 16 windows of 64 px without overlap: one event per batch of 4.
    assert progress[-1] == 100.0 and progress == sorted(progress) and len(progress) == 4
    assert output.is_file()


def test_in_process_cancel_stops_at_the_next_batch_and_leaves_no_output(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    output = tmp_path / "changes.gpkg"
    request = runner.DetectRequest(
        before=str(pair.before),
        after=str(pair.after),
        output=str(output),
        mask_out=str(tmp_path / "mask.tif"),
        tile_size=32,
        overlap=0,
        batch_size=1,
    )
    progress: list[float] = []
    with pytest.raises(runner.RunCancelled):
        runner.run_in_process(
            request, progress=progress.append, log=lambda m: None, is_cancelled=lambda: True
        )
    assert len(progress) < 10  # of 64 tiles
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pair"]


def test_in_process_environment_report_names_versions_and_models() -> None:
    import torch

    import mtrs_geo
    from mtrs_geo.model_api import registered_names

    report = environment.probe_in_process()
    assert report.mode == "in-process"
    assert report.mtrs_version == mtrs_geo.__version__
    assert report.torch_version == torch.__version__
    assert report.cuda_available is torch.cuda.is_available()
    assert list(report.models) == registered_names()
    assert any(line.startswith("torch version: ") for line in report.lines())


# ---------------------------------------------------------------------------------------------
# Finding the environment
# ---------------------------------------------------------------------------------------------


def test_find_mtrs_accepts_the_executable_the_env_folder_or_path() -> None:
    venv = REPO / ".venv"
    assert environment.find_mtrs(str(MTRS)) == MTRS
    assert environment.find_mtrs(str(venv)) == venv / "bin" / "mtrs"
    assert environment.find_mtrs(str(venv / "bin")) == venv / "bin" / "mtrs"
    assert environment.find_mtrs("", search_path=f"/usr/bin:{venv / 'bin'}") == MTRS
    assert environment.find_mtrs("", search_path="/nonexistent") is None
    assert environment.find_mtrs("/nonexistent/env") is None
    assert environment.environment_python(MTRS) == venv / "bin" / "python"


# ---------------------------------------------------------------------------------------------
# The QGIS tests, in the system Python that carries QGIS
# ---------------------------------------------------------------------------------------------


def qgis_present() -> bool:
    if not Path(SYSTEM_PYTHON).is_file():
        return False
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, env=clean_env()
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.qgis
def test_plugin_in_real_headless_qgis(tmp_path: Path) -> None:
    if not qgis_present():
        message = "QGIS's Python bindings are missing: run scripts/system-deps/qgis.sh as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    report = tmp_path / "qgis-junit.xml"
    env = clean_env()
    env["QT_QPA_PLATFORM"] = "offscreen"
    done = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-m",
            "pytest",
            str(REPO / "tests" / "qgis_suite"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--confcutdir",
            str(REPO / "tests" / "qgis_suite"),
            "-W",
            "ignore::pytest.PytestConfigWarning",
            f"--junitxml={report}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
    )
    output = (done.stdout + done.stderr)[-6000:]
    assert report.is_file(), output
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    names = {case.get("name", "") for case in suite.iter("testcase")}
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, output
    assert done.returncode == 0, output
    for part in ("class_factory", "planted_changes", "qgis_process", "cancel", "engine_message"):
        assert any(part in name for name in names), f"no QGIS test about {part}: {sorted(names)}"


# ---------------------------------------------------------------------------------------------
# The warm worker (`mtrs serve --stdio`)
# ---------------------------------------------------------------------------------------------


def load_plugin_package(name: str) -> ModuleType:
    """Import ``qgis_plugin`` as a package (its modules import each other relatively)."""
    spec = importlib.util.spec_from_file_location(
        name, PLUGIN_SOURCE / "__init__.py", submodule_search_locations=[str(PLUGIN_SOURCE)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


load_plugin_package("mtrs_qgis_package")
worker_module = importlib.import_module("mtrs_qgis_package.worker")
worker_runner = importlib.import_module("mtrs_qgis_package.runner")


def test_warm_worker_serves_runs_restarts_when_dead_and_stops(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    worker = worker_module.EngineWorker(str(MTRS))

    def run(name: str, cancel: bool = False, **extra: object) -> object:
        request = worker_runner.DetectRequest(
            before=str(pair.before), after=str(pair.after), output=str(tmp_path / name),
            model="cva", **extra,
        )  # fmt: skip
        messages: list[str] = []
        summary = worker_module.run_worker(
            worker, request, progress=lambda p: None, log=messages.append,
            is_cancelled=lambda: cancel,
        )  # fmt: skip
        return summary, messages

    try:
        first, _ = run("a.gpkg", tile_size=64, overlap=8)
        process = worker.process
        second, messages = run("b.gpkg", tile_size=64, overlap=8, bands_before=(3, 2, 1))
        assert worker.process is process and worker.starts == 1  # the same engine process
        assert first.polygons == second.polygons and first.polygons >= len(pair.changes)
        with pytest.raises(worker_runner.RunFailed, match="out of range"):
            run("c.gpkg", bands_before=(1, 2, 9))
        assert worker.alive()  # a refused input does not end the worker
        process.kill()
        process.wait()
        run("d.gpkg", tile_size=64, overlap=8)
        assert worker.starts == 2 and (tmp_path / "d.gpkg").is_file()
    finally:
        worker.stop()
    assert worker.process is None and process.poll() is not None


def test_warm_worker_cancel_stops_the_run_and_keeps_the_worker(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    worker = worker_module.EngineWorker(str(MTRS))
    progress: list[float] = []
    request = worker_runner.DetectRequest(
        before=str(pair.before), after=str(pair.after), output=str(tmp_path / "c.gpkg"),
        tile_size=32, overlap=0, batch_size=1, model="cva",
    )  # fmt: skip
    try:
        with pytest.raises(worker_runner.RunCancelled):
            worker_module.run_worker(
                worker, request, progress=progress.append, log=lambda m: None,
                is_cancelled=lambda: len(progress) > 2,
            )  # fmt: skip
        assert not (tmp_path / "c.gpkg").exists() and worker.alive()
        environment_payload = worker_module.worker_environment(worker)
        assert "cva" in environment_payload["models"]
    finally:
        worker.stop()
