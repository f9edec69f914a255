"""The algorithm in a real headless QGIS: processing.run, qgis_process, Cancel, engine errors."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MTRS, PLUGIN_FOLDER, VENV_BIN

ALGORITHM_ID = "mtrs:referring_change_segmentation"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # /usr/bin/qgis_process passes an option 3.22 rejects


class RecordingFeedback:
    """Builds a QgsProcessingFeedback that records progress and messages, and can cancel itself."""

    @staticmethod
    def create(cancel_on: str | None = None) -> Any:
        from qgis.core import QgsProcessingFeedback

        class Recorder(QgsProcessingFeedback):
            def __init__(self) -> None:
                super().__init__()
                self.progress_values: list[float] = []
                self.messages: list[str] = []
                self.cancelled_at: float | None = None
                self.progressChanged.connect(self.progress_values.append)

            def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
                self.messages.append(info)
                if cancel_on and cancel_on in info and self.cancelled_at is None:
                    self.cancelled_at = time.monotonic()
                    self.cancel()
                super().pushInfo(info)

        return Recorder()


def planted_geometry(scenes: dict[str, Any]) -> Any:
    """Union of the planted change polygons (EPSG:32633)."""
    from qgis.core import QgsGeometry

    return QgsGeometry.unaryUnion([QgsGeometry.fromWkt(wkt) for wkt in scenes["changes_wkt"]])


def detected_geometry(layer: Any, crs: str = "EPSG:32633") -> Any:
    """Union of a layer's polygons, in ``crs``."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsGeometry,
        QgsProject,
    )

    transform = QgsCoordinateTransform(
        layer.crs(), QgsCoordinateReferenceSystem(crs), QgsProject.instance()
    )
    geometries = []
    for feature in layer.getFeatures():
        geometry = QgsGeometry(feature.geometry())
        geometry.transform(transform)
        geometries.append(geometry)
    return QgsGeometry.unaryUnion(geometries)


def assert_lands_on_planted_changes(layer: Any, scenes: dict[str, Any]) -> None:
    """Detected polygons cover the planted changes and little else (IoU of the unions)."""
    planted = planted_geometry(scenes)
    detected = detected_geometry(layer)
    iou = detected.intersection(planted).area() / detected.combine(planted).area()
    assert iou > 0.8, f"IoU with the planted changes is {iou:.3f}"
    for wkt in scenes["changes_wkt"]:
        from qgis.core import QgsGeometry

        change = QgsGeometry.fromWkt(wkt)
        assert detected.intersection(change).area() > 0.8 * change.area()


def base_parameters(scenes: dict[str, Any], output: Path, **extra: Any) -> dict[str, Any]:
    parameters = {
        "BEFORE": scenes["before"],
        "AFTER": scenes["after"],
        "QUERY": "new buildings",
        "MODEL": "cva",
        "TILE_SIZE": 64,
        "OVERLAP": 8,
        "BATCH_SIZE": 2,
        "OUTPUT": str(output),
    }
    parameters.update(extra)
    return parameters


def test_check_environment_reports_the_versions_of_the_configured_env(
    provider: Any, venv_facts: dict[str, Any]
) -> None:
    import processing

    results = processing.run("mtrs:check_environment", {})
    assert results["EXECUTABLE"] == str(MTRS)
    assert results["MTRS_VERSION"] == venv_facts["mtrs"]
    assert results["TORCH_VERSION"] == venv_facts["torch"]
    assert results["CUDA_AVAILABLE"] is venv_facts["cuda"]


def test_model_choices_are_the_registered_models_of_the_env(
    provider: Any, venv_facts: dict[str, Any]
) -> None:
    from qgis.core import QgsApplication

    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    model = algorithm.parameterDefinition("MODEL")
    assert model.options() == venv_facts["models"]
    assert model.usesStaticStrings()
    assert model.defaultValue() == "mtrefseg-r1-both-ways"  # the engine's default


def test_provider_settings_hold_the_environment_and_the_default_device(provider: Any) -> None:
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.core import QgsApplication

    assert ProcessingConfig.getSetting("MTRS_ENVIRONMENT") == str(MTRS)
    assert ProcessingConfig.getSetting("MTRS_DEVICE", readable=True) == "auto"
    ProcessingConfig.setSettingValue("MTRS_DEVICE", ["auto", "cpu", "cuda", "mps"].index("cpu"))
    try:
        fresh = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
        assert fresh.parameterDefinition("DEVICE").defaultValue() == "cpu"
    finally:
        ProcessingConfig.setSettingValue("MTRS_DEVICE", 0)


def test_run_with_cva_loads_a_styled_layer_on_the_planted_changes(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

    feedback = RecordingFeedback.create()
    output = tmp_path / "changes.gpkg"
    mask = tmp_path / "probability.tif"
    results = processing.runAndLoadResults(
        ALGORITHM_ID, base_parameters(scenes, output, MASK=str(mask)), feedback=feedback
    )
    assert results["OUTPUT"] == str(output) and results["MASK"] == str(mask)

    loaded = [
        layer
        for layer in QgsProject.instance().mapLayers().values()
        if isinstance(layer, QgsVectorLayer) and layer.source().split("|")[0] == str(output)
    ]
    assert len(loaded) == 1
    layer = loaded[0]
    # cva ignores queries: the layer must not claim to hold "new buildings".
    assert layer.isValid() and layer.name() == "Changes (any change; the model ignores the query)"
    assert layer.crs().authid() == scenes["crs"]
    assert {"id", "query", "model", "area_m2", "mean_score", "before", "after"} <= set(
        layer.fields().names()
    )
    assert layer.featureCount() >= len(scenes["changes_wkt"])
    assert {f["query"] for f in layer.getFeatures()} == {"new buildings"}
    assert_lands_on_planted_changes(layer, scenes)
    # The plugin's default style (styles/changes.qml: red outline) was applied on loading.
    symbol = layer.renderer().symbol()
    assert symbol.symbolLayer(0).strokeColor().name() == "#e3262a"

    probability = QgsRasterLayer(str(mask), "mask")
    assert probability.isValid() and probability.bandCount() == 1
    assert probability.crs().authid() == scenes["crs"]
    assert (probability.width(), probability.height()) == (256, 256)

    # Progress came from the CLI's JSON lines, tile by tile, up to 100 %.
    assert feedback.progress_values[-1] == 100
    assert len(set(feedback.progress_values)) > 5
    assert any("tiles to predict" in message for message in feedback.messages)
    QgsProject.instance().removeAllMapLayers()


def test_other_ogr_formats_are_written_from_the_engine_output(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsVectorLayer

    output = tmp_path / "changes.sqlite"
    results = processing.run(ALGORITHM_ID, base_parameters(scenes, output, TILE_SIZE=128))
    layer = QgsVectorLayer(results["OUTPUT"], "changes", "ogr")
    assert layer.isValid() and layer.dataProvider().storageType() == "SQLite"
    assert_lands_on_planted_changes(layer, scenes)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["changes.sqlite"]


def test_qgis_process_runs_the_algorithm_with_mtrs_found_on_path(
    plugin_dir: Path, scenes: dict[str, Any], tmp_path: Path
) -> None:
    from qgis.core import QgsVectorLayer

    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"QGIS_CUSTOM_CONFIG_PATH", "PYTHONPATH", "PYTHONHOME"}
    }
    # A fresh profile (no plugin settings: mtrs comes from PATH). The venv's bin goes last: QGIS's
    # embedded Python must not find the venv's python3 first.
    env.update(
        HOME=str(home),
        QT_QPA_PLATFORM="offscreen",
        QGIS_PLUGINPATH=str(plugin_dir),
        PATH=f"/usr/bin:/bin:{VENV_BIN}",
    )
    enabled = subprocess.run(
        [QGIS_PROCESS, "plugins", "enable", PLUGIN_FOLDER],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    output = tmp_path / "changes.geojson"
    run = subprocess.run(
        [
            QGIS_PROCESS,
            "--json",
            "run",
            ALGORITHM_ID,
            f"--BEFORE={scenes['before']}",
            f"--AFTER={scenes['after']}",
            "--QUERY=new buildings",
            "--MODEL=cva",
            "--TILE_SIZE=128",
            f"--OUTPUT={output}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(run.stdout[run.stdout.index("{") :])
    assert report["results"]["OUTPUT"] == str(output)
    log = report["log"]["info"]
    lines = log if isinstance(log, list) else log.splitlines()
    assert f"running {VENV_BIN / 'mtrs'}" in lines  # found on PATH: the profile has no setting
    layer = QgsVectorLayer(str(output), "changes", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:4326"  # GeoJSON is RFC 7946
    assert_lands_on_planted_changes(layer, scenes)


def _processes_reading(path: str) -> list[int]:
    """Ids of running processes whose command line names ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if path.encode() in command and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def test_cancel_stops_the_engine_promptly_and_leaves_no_output(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsProcessingException

    feedback = RecordingFeedback.create(cancel_on="tiles to predict")
    parameters = {
        "BEFORE": scenes["large_before"],
        "AFTER": scenes["large_after"],
        "MODEL": "cva",
        "TILE_SIZE": 32,
        "OVERLAP": 0,
        "BATCH_SIZE": 1,
        "OUTPUT": str(tmp_path / "changes.gpkg"),
        "MASK": str(tmp_path / "probability.tif"),
    }
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run(ALGORITHM_ID, parameters, feedback=feedback)
    stopped = time.monotonic()
    assert feedback.cancelled_at is not None
    assert stopped - feedback.cancelled_at < 8.0  # the CLI stopped itself (SIGKILL comes at 10 s)
    assert all(value < 100 for value in feedback.progress_values)  # stopped before the last tile
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file
    assert _processes_reading(scenes["large_after"]) == []


def test_cancel_from_another_thread_while_the_engine_runs(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsProcessingException

    feedback = RecordingFeedback.create()
    timer = threading.Timer(0.2, feedback.cancel)

    def start_timer_on_first_tile(progress: float) -> None:
        if not timer.is_alive() and not feedback.isCanceled():
            timer.start()

    feedback.progressChanged.connect(start_timer_on_first_tile)
    parameters = {
        "BEFORE": scenes["large_before"],
        "AFTER": scenes["large_after"],
        "TILE_SIZE": 32,
        "OVERLAP": 0,
        "BATCH_SIZE": 1,
        "OUTPUT": str(tmp_path / "changes.fgb"),
    }
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run(ALGORITHM_ID, parameters, feedback=feedback)
    timer.join()
    assert list(tmp_path.iterdir()) == []


def test_disjoint_footprints_raise_a_processing_error_with_the_engine_message(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsProcessingException

    output = tmp_path / "changes.gpkg"
    # What the engine itself says about this pair.
    direct = subprocess.run(
        [str(MTRS), "detect", scenes["before"], scenes["far_after"], "-o", str(output)]
        + ["--progress-json"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}},
    )
    assert direct.returncode == 2
    events = [json.loads(line) for line in direct.stdout.splitlines() if line.startswith("{")]
    engine_message = next(event["message"] for event in events if event["event"] == "error")

    with pytest.raises(QgsProcessingException) as raised:
        processing.run(
            ALGORITHM_ID,
            {"BEFORE": scenes["before"], "AFTER": scenes["far_after"], "OUTPUT": str(output)},
        )
    assert str(raised.value) == engine_message
    assert "Traceback" not in str(raised.value)
    assert not output.exists()


def test_algorithm_runs_inside_a_graphical_model_and_supports_batch(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import (
        QgsApplication,
        QgsProcessingAlgorithm,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsVectorLayer,
    )

    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    assert algorithm.flags() & QgsProcessingAlgorithm.FlagSupportsBatch
    assert algorithm.flags() & QgsProcessingAlgorithm.FlagCanCancel

    model = QgsProcessingModelAlgorithm("changes model", "tests")
    child = QgsProcessingModelChildAlgorithm(ALGORITHM_ID)
    child.setChildId("detect")
    static = QgsProcessingModelChildParameterSource.fromStaticValue
    for name, value in (
        ("BEFORE", scenes["before"]),
        ("AFTER", scenes["after"]),
        ("QUERY", "new buildings"),
        ("MODEL", "cva"),
        ("TILE_SIZE", 128),
    ):
        child.addParameterSources(name, [static(value)])
    output = QgsProcessingModelOutput("changes", "Changes")
    output.setChildId("detect")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"changes": output})
    model.addChildAlgorithm(child)
    model.updateDestinationParameters()

    destination = tmp_path / "model_changes.gpkg"
    results = processing.run(model, {"detect:changes": str(destination)})
    assert results["detect:changes"] == str(destination)
    layer = QgsVectorLayer(str(destination), "changes", "ogr")
    assert layer.isValid()
    assert_lands_on_planted_changes(layer, scenes)
