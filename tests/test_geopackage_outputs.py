"""GeoPackage outputs: nothing else in an existing file is lost, and every layer name is allowed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
import shapely
from cli_run import CliResult, files_in, run_mtrs

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.geopackage import layer_name
from mtrs_geo.pipeline import detect
from mtrs_geo.write import ATTRIBUTE_COLUMNS, check_existing_output


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layers_of(path: Path) -> list[str]:
    return [str(name) for name, _ in pyogrio.list_layers(path)]


def add_layer(path: Path, layer: str, columns: dict[str, list[object]] | None = None) -> None:
    """Write a one-square layer into ``path`` (a GeoPackage, created or added to)."""
    table = gpd.GeoDataFrame(
        columns or {"name": ["field 7"]}, geometry=[shapely.box(0, 0, 10, 10)], crs=32633
    )
    table.to_file(path, layer=layer, driver="GPKG")


def detect_cva(pair, output: Path, *queries: str) -> CliResult:
    options = [arg for query in queries for arg in ("-q", query)]
    return run_mtrs(
        "detect", pair.before, pair.after, "--model", "cva", "--tile-size", 128, "-o", output,
        *options, "--quiet",
    )  # fmt: skip


def test_a_geopackage_holding_another_layer_is_refused_and_kept_whole(tmp_path: Path, pair) -> None:
    project = tmp_path / "proj.gpkg"
    add_layer(project, "survey")
    kept = digest(project)

    result = detect_cva(pair, project)

    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "'survey'" in result.err and "did not write" in result.err
    assert digest(project) == kept and layers_of(project) == ["survey"]
    assert not [name for name in files_in(tmp_path) if name.startswith(".")]


def test_a_rerun_replaces_its_own_layers_and_drops_stale_query_layers(tmp_path: Path, pair) -> None:
    output = tmp_path / "changes.gpkg"
    assert detect_cva(pair, output, "new roads", "new buildings", "cleared trees").code == 0

    again = detect_cva(pair, output, "new roads", "flooded fields")

    assert again.code == 0, again.err
    assert layers_of(output) == ["changes", "changes_new_roads", "changes_flooded_fields"]


def test_a_foreign_layer_named_like_a_query_layer_is_not_taken_for_the_runs_own(
    tmp_path: Path,
) -> None:
    output = tmp_path / "changes.gpkg"
    add_layer(output, "changes", {name: ["x"] for name in ATTRIBUTE_COLUMNS})
    add_layer(output, "changes_survey")  # named like a query's layer, without its attributes
    with pytest.raises(InputError, match="'changes_survey'"):
        check_existing_output(output)


def test_qgis_styles_saved_in_the_geopackage_count_as_content_to_keep(tmp_path: Path) -> None:
    import sqlite3

    output = tmp_path / "changes.gpkg"
    add_layer(output, "changes", {name: ["x"] for name in ATTRIBUTE_COLUMNS})
    database = sqlite3.connect(output)
    database.execute("CREATE TABLE layer_styles (id INTEGER PRIMARY KEY, styleQML TEXT)")
    database.commit()
    database.close()
    with pytest.raises(InputError, match="'layer_styles'"):
        check_existing_output(output)


def test_a_file_that_is_no_database_is_replaced_like_any_output(tmp_path: Path) -> None:
    output = tmp_path / "changes.gpkg"
    output.write_text("not a GeoPackage")
    check_existing_output(output)
    check_existing_output(tmp_path / "missing.gpkg")


def test_a_geopackage_with_other_layers_is_refused_before_the_model_loads(
    tmp_path: Path, pair
) -> None:
    project = tmp_path / "proj.gpkg"
    add_layer(project, "survey")

    def no_model(name: str) -> object:
        raise AssertionError(f"model {name} loaded for a run that must be refused")

    config = DetectConfig(before=pair.before, after=pair.after, output=project, model="cva")
    with pytest.raises(InputError, match="'survey'"):
        detect(config, models=no_model)


@pytest.mark.parametrize(
    ("stem", "layer"),
    [
        ("gpkg_roads", "changes_gpkg_roads"),
        ("GPKGroads", "changes_GPKGroads"),
        ("sqlite_roads", "changes_sqlite_roads"),
        ("roads_gpkg", "roads_gpkg"),
    ],
)
def test_a_file_named_with_a_reserved_prefix_gets_a_layer_gdal_allows(
    stem: str, layer: str
) -> None:
    assert layer_name(stem) == layer


def test_a_geopackage_named_gpkg_something_is_written_with_its_query_layers(
    tmp_path: Path, pair
) -> None:
    output = tmp_path / "gpkg_roads.gpkg"
    result = detect_cva(pair, output, "new roads", "new buildings")
    assert result.code == 0, result.err
    assert layers_of(output) == [
        "changes_gpkg_roads",
        "changes_gpkg_roads_new_roads",
        "changes_gpkg_roads_new_buildings",
    ]
    assert detect_cva(pair, output, "new roads").code == 0  # a rerun over it
    assert layers_of(output) == ["changes_gpkg_roads"]
