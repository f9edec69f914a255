"""An analyst iterating in one QGIS session: repeated runs, bands, the warm engine, areas, dates.

Every run goes through the path of the algorithm dialog: ``processing.runAndLoadResults`` hands
the results to Processing's ``handleAlgorithmResults``, which loads the layers on completion and
applies their post-processors (the dialog calls the same function).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import MTRS
from test_processing import (
    ALGORITHM_ID,
    RecordingFeedback,
    assert_lands_on_planted_changes,
    base_parameters,
)

RAMP_MAX = "#fde725"  # the probability ramp's colour at 1 (viridis)
CHANGES_OUTLINE = "#e3262a"


def loaded(path: Path, kind: type) -> list[Any]:
    """Layers of the project read from ``path``."""
    from qgis.core import QgsProject

    return [
        layer
        for layer in QgsProject.instance().mapLayers().values()
        if isinstance(layer, kind) and layer.source().split("|")[0] == str(path)
    ]


def assert_styled_probability(layer: Any) -> None:
    """The probability raster is drawn with a ramp over [0, 1]; nodata is transparent."""
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0.0, 1.0)
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert [item.value for item in items][0] == 0.0 and items[-1].value == 1.0
    assert items[-1].color.name() == RAMP_MAX
    provider = layer.dataProvider()
    assert provider.sourceHasNoDataValue(1) and provider.useSourceNoDataValue(1)
    assert provider.sourceNoDataValue(1) == -1.0


def run_and_load(parameters: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    import processing

    feedback = RecordingFeedback.create()
    results = processing.runAndLoadResults(ALGORITHM_ID, parameters, feedback=feedback)
    return results, feedback


def test_three_runs_in_one_qgis_each_load_their_styled_layers(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

    runs = [
        ("cva", "new buildings"),
        ("mtrefseg-r1", "new buildings"),
        ("mtrefseg-r1", "new roads"),
    ]
    seconds_to_first_tile: list[float] = []
    for index, (model, query) in enumerate(runs):
        output = tmp_path / f"changes_{index}.gpkg"
        mask = tmp_path / f"probability_{index}.tif"
        parameters = base_parameters(
            scenes, output, MODEL=model, QUERY=query, MASK=str(mask), TILE_SIZE=128
        )
        results, feedback = run_and_load(parameters)
        assert results["OUTPUT"] == str(output), feedback.messages

        (changes,) = loaded(output, QgsVectorLayer)
        assert changes.isValid()
        assert changes.renderer().symbol().symbolLayer(0).strokeColor().name() == CHANGES_OUTLINE
        if model == "mtrefseg-r1":  # query-aware: the layer is named after the query
            assert changes.name() == f"Changes: {query}"
        else:
            assert_lands_on_planted_changes(changes, scenes)
        (probability,) = loaded(mask, QgsRasterLayer)
        assert probability.name() == "Change probability"
        assert_styled_probability(probability)
        starts = [m for m in feedback.messages if m.startswith("predicting after ")]
        assert len(starts) == 1
        seconds_to_first_tile.append(float(starts[0].split()[2]))
        if index > 0:  # the same engine process serves every run
            assert "the warm worker has the engine loaded" in feedback.messages
    # A second query on the same pair with a loaded model starts predicting at once.
    assert seconds_to_first_tile[2] < 2.0, seconds_to_first_tile
    QgsProject.instance().removeAllMapLayers()


def test_loaded_layers_render_on_a_map(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    """A screenshot-level check: the probability ramp and the red outlines reach the pixels."""
    from qgis.core import (
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsProject,
        QgsRasterLayer,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    output, mask = tmp_path / "changes.gpkg", tmp_path / "probability.tif"
    run_and_load(base_parameters(scenes, output, MASK=str(mask), TILE_SIZE=128))
    (changes,) = loaded(output, QgsVectorLayer)
    (probability,) = loaded(mask, QgsRasterLayer)
    settings = QgsMapSettings()
    settings.setLayers([changes, probability])
    settings.setDestinationCrs(probability.crs())
    settings.setExtent(probability.extent())
    settings.setOutputSize(QSize(256, 256))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    image.save(str(tmp_path / "map.png"))
    colours = {QColor(image.pixel(x, y)).name() for x in range(0, 256, 2) for y in range(0, 256, 2)}
    assert CHANGES_OUTLINE in colours  # change outlines drawn on top
    ramp_like = [c for c in colours if c not in ("#ffffff", CHANGES_OUTLINE)]
    assert len(ramp_like) > 10  # the probability ramp under them
    QgsProject.instance().removeAllMapLayers()


def test_band_parameters_belong_to_their_layers(provider: Any) -> None:
    from qgis.core import QgsApplication

    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    for name, parent in (("BEFORE_BANDS", "BEFORE"), ("AFTER_BANDS", "AFTER")):
        band = algorithm.parameterDefinition(name)
        assert band.type() == "band" and band.parentLayerParameterName() == parent
        assert band.allowMultiple() and band.flags() & band.FlagOptional
    assert algorithm.parameterDefinition("EXTENT").type() == "extent"
    assert algorithm.parameterDefinition("AREA").type() == "source"


def test_six_band_sample_runs_with_mtrefseg_from_the_dialog_defaults(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    from qgis.core import QgsApplication, QgsVectorLayer

    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    # What the dialog starts with: every parameter at its default (the model too: the bundled
    # checkpoint asked both ways); the user picks the two layers and the query, types no band.
    parameters = {
        definition.name(): definition.defaultValue()
        for definition in algorithm.parameterDefinitions()
        if not definition.isDestination()
    }
    output = tmp_path / "new_buildings.gpkg"
    parameters.update(
        BEFORE=scenes["sample_before"],
        AFTER=scenes["sample_after"],
        QUERY="new buildings and roads",  # 30 m Landsat: the medium-resolution class
        OUTPUT=str(output),
    )
    assert parameters["MODEL"] == "mtrefseg-r1-both-ways"
    results, feedback = run_and_load(parameters)
    assert results["OUTPUT"] == str(output)
    assert "before image: bands 3, 2, 1 (red, green, blue by band description)" in (
        feedback.messages
    )
    assert not [m for m in feedback.messages if "--" in m]  # no CLI flag reaches QGIS
    layer = QgsVectorLayer(str(output), "changes", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    # Acquisition dates from the sample's tags (ACQUISITION_YEAR) on every polygon.
    assert {(f["before_date"], f["after_date"]) for f in layer.getFeatures()} == {("2000", "2003")}


def test_band_mismatch_message_names_no_cli_flag(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsProcessingException

    parameters = base_parameters(
        scenes, tmp_path / "c.gpkg", BEFORE_BANDS=[1, 2], AFTER_BANDS=[1, 2, 3]
    )
    with pytest.raises(QgsProcessingException) as raised:
        processing.run(ALGORITHM_ID, parameters)
    assert "band count mismatch" in str(raised.value) and "--" not in str(raised.value)


def test_single_band_layers_are_stacked_for_the_user(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsVectorLayer

    output = tmp_path / "changes.gpkg"
    before, *before_more = scenes["before_bands"]
    after, *after_more = scenes["after_bands"]
    parameters = base_parameters(
        scenes,
        output,
        BEFORE=before,
        AFTER=after,
        BEFORE_MORE=before_more,
        AFTER_MORE=after_more,
        TILE_SIZE=128,
    )
    processing.run(ALGORITHM_ID, parameters)
    layer = QgsVectorLayer(str(output), "changes", "ogr")
    assert_lands_on_planted_changes(layer, scenes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changes.gpkg"]


def test_extent_and_area_of_interest_limit_the_run(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer
    from test_processing import detected_geometry, planted_geometry

    planted = planted_geometry(scenes)
    first = QgsGeometry.fromWkt(scenes["changes_wkt"][0])
    box = first.boundingBox().buffered(60.0)
    extent = f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:32633]"
    output = tmp_path / "extent.gpkg"
    processing.run(ALGORITHM_ID, base_parameters(scenes, output, EXTENT=extent, TILE_SIZE=64))
    layer = QgsVectorLayer(str(output), "changes", "ogr")
    detected = detected_geometry(layer)
    assert detected.intersection(first).area() > 0.8 * first.area()
    assert QgsGeometry.fromRect(box.buffered(1.0)).contains(detected)
    assert detected.area() < 0.8 * planted.area()

    area = QgsVectorLayer("Polygon?crs=EPSG:32633", "area", "memory")
    feature = QgsFeature()
    feature.setGeometry(first.buffer(30.0, 4))
    area.dataProvider().addFeatures([feature])
    output = tmp_path / "area.gpkg"
    processing.run(ALGORITHM_ID, base_parameters(scenes, output, AREA=area, TILE_SIZE=64))
    detected = detected_geometry(QgsVectorLayer(str(output), "changes", "ogr"))
    assert detected.intersection(first).area() > 0.8 * first.area()
    assert first.buffer(45.0, 4).contains(detected)


def test_dates_typed_in_the_dialog_reach_the_polygons(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import processing
    from qgis.core import QgsVectorLayer

    output = tmp_path / "changes.gpkg"
    parameters = base_parameters(
        scenes, output, BEFORE_DATE="2019-04-01", AFTER_DATE="2021-06-30", TILE_SIZE=128
    )
    processing.run(ALGORITHM_ID, parameters)
    layer = QgsVectorLayer(str(output), "changes", "ogr")
    assert {(f["before_date"], f["after_date"]) for f in layer.getFeatures()} == {
        ("2019-04-01", "2021-06-30")
    }


def test_dead_worker_is_started_again(
    provider: Any, scenes: dict[str, Any], tmp_path: Path
) -> None:
    import importlib

    worker = importlib.import_module("mtrs_geo_plugin.worker").worker_for(str(MTRS))
    run_and_load(base_parameters(scenes, tmp_path / "a.gpkg", TILE_SIZE=128))
    assert worker.alive()
    starts = worker.starts
    worker.process.kill()
    worker.process.wait()
    results, feedback = run_and_load(base_parameters(scenes, tmp_path / "b.gpkg", TILE_SIZE=128))
    assert results["OUTPUT"] == str(tmp_path / "b.gpkg")
    assert worker.starts == starts + 1 and "starting the warm worker" in feedback.messages
    from qgis.core import QgsProject

    QgsProject.instance().removeAllMapLayers()


def test_provider_settings_page_opens_on_the_mtrs_group(provider: Any) -> None:
    import importlib

    import qgis.utils
    from qgis.PyQt.QtWidgets import QMenu

    # Processing's menus module reads the main window's menu titles when it is first imported.
    menus = {"vectorMenu": "&Vector", "rasterMenu": "&Raster", "databaseMenu": "&Database"}
    keep = {name: QMenu(title) for name, title in menus.items()}
    for name, menu in keep.items():
        getattr(qgis.utils.iface, name).return_value = menu
    from processing.gui.ConfigDialog import ConfigOptionsPage

    plugin_module = importlib.import_module("mtrs_geo_plugin.plugin")
    page = ConfigOptionsPage(None)
    page.resize(800, 600)
    page.show()
    try:
        assert plugin_module.reveal_provider_settings()
        tree = page.config_widget.tree
        current = tree.currentIndex()
        assert current.data() == "MTRS" and tree.isExpanded(current)
        assert tree.columnWidth(0) <= max(tree.viewport().width() // 2, 200)
        group = page.config_widget.model.itemFromIndex(current)
        labels = [group.child(row, 0).text() for row in range(group.rowCount())]
        assert all(len(label) <= 45 for label in labels), labels
    finally:
        page.close()
    assert not provider.icon().isNull() and provider.svgIconPath().endswith("provider.svg")
