"""Several queries in one pass: one output with every query's polygons, a mask band per query."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from cli_run import run_mtrs
from scenes import make_pair

from mtrs_geo.batch import batch_configs
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
from mtrs_geo.multiquery import layer_names, query_settings, repeated_queries, split_queries
from mtrs_geo.pipeline import detect

pytestmark = pytest.mark.usefixtures("torch_one_thread")

QUERIES = ("new buildings", "new roads", "")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-run"
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny")).save_pretrained(folder)
    return folder


def test_query_lists_split_on_semicolons_and_lines() -> None:
    assert split_queries("new buildings; new roads ;") == ("new buildings", "new roads")
    assert split_queries("new buildings\ncleared vegetation\r\n\nnew buildings") == (
        "new buildings",
        "cleared vegetation",
    )
    assert split_queries("  new roads ") == ("new roads",)
    assert split_queries("") == ("",) and split_queries(" ; ") == ("",)
    assert query_settings("a; b") == {"query": "", "queries": ("a", "b")}
    assert query_settings("a") == {"query": "a", "queries": ()}
    assert layer_names("changes", ["new buildings", "", "New-Buildings"]) == [
        "changes_new_buildings",
        "changes_any_change",
        "changes_new_buildings_2",
    ]


def test_query_layers_keep_the_letters_of_every_script_and_never_pose_as_another_query() -> None:
    queries = ["道路", "any change", "建物", "nouveaux bâtiments", "???", "", "नई इमारतें"]
    assert layer_names("b4", queries) == [
        "b4_道路",
        "b4_any_change",
        "b4_建物",
        "b4_nouveaux_bâtiments",
        "b4_query5",  # no letter or digit: named by its position
        "b4_any_change_2",
        "b4_नई_इमारतें",  # vowel signs stay with their letters
    ]
    assert layer_names("gpkg_roads", ["new roads"]) == ["changes_gpkg_roads_new_roads"]
    assert layer_names("c", ["Roads", "roads!", "roads 2"]) == [
        "c_roads",
        "c_roads_2",
        "c_roads_2_2",
    ]


def test_unicode_query_layers_open_in_gdal_with_their_own_polygons(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "scene")
    output = tmp_path / "b4.gpkg"
    queries = ("道路", "any change", "建物", "nouveaux bâtiments")
    options = [arg for query in queries for arg in ("-q", query)]
    done = run_mtrs(
        "detect", pair.before, pair.after, *options, "-o", output, "--model", "cva",
        "--tile-size", 128, "--quiet",
    )  # fmt: skip
    assert done.code == 0, done.err
    layers = [name for name, _ in pyogrio.list_layers(output)]
    assert layers == ["b4", "b4_道路", "b4_any_change", "b4_建物", "b4_nouveaux_bâtiments"]
    for name, query in zip(layers[1:], queries, strict=True):
        assert set(gpd.read_file(output, layer=name)["query"]) == {query}


def test_an_empty_q_beside_others_is_the_any_change_query() -> None:
    assert repeated_queries(["", "new roads"]) == ("", "new roads")
    assert repeated_queries(["new roads; ", " "]) == ("new roads", "")
    assert repeated_queries([]) == ("",) and repeated_queries(["", ""]) == ("",)
    assert query_settings(["", "new roads"]) == {"query": "", "queries": ("", "new roads")}
    assert query_settings(["new roads"]) == {"query": "new roads", "queries": ()}


def test_cli_answers_an_empty_q_as_any_change_beside_a_query(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "scene")
    output, mask = tmp_path / "changes.geojson", tmp_path / "mask.tif"
    done = run_mtrs(
        "detect", pair.before, pair.after, "-q", "", "-q", "new roads", "-o", output,
        "--mask-out", mask, "--model", "cva", "--tile-size", 128, "--json",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert set(gpd.read_file(output)["query"]) == {"", "new roads"}
    with rasterio.open(mask) as raster:
        assert raster.descriptions == ("any change", "new roads")


@pytest.mark.parametrize(
    ("query", "mask_type", "description"),
    [("new roads", "probability", "new roads"), ("", "binary", "any change")],
)
def test_the_mask_band_of_a_single_query_is_described_by_it(
    tmp_path: Path, query: str, mask_type: str, description: str
) -> None:
    pair = make_pair(tmp_path / "scene")
    mask = tmp_path / "mask.tif"
    done = run_mtrs(
        "detect", pair.before, pair.after, "-q", query, "--mask-out", mask,
        "--mask-type", mask_type, "--model", "cva", "--tile-size", 128, "--quiet",
    )  # fmt: skip
    assert done.code == 0, done.err
    with rasterio.open(mask) as raster:
        assert raster.count == 1 and raster.descriptions == (description,)
        assert raster.dtypes == ("float32" if mask_type == "probability" else "uint8",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "scene"]


def test_a_query_asked_twice_is_refused(tmp_path: Path) -> None:
    config = DetectConfig(
        before=tmp_path / "a.tif",
        after=tmp_path / "b.tif",
        queries=("new roads", "new roads "),
        output=tmp_path / "c.gpkg",
    )
    with pytest.raises(InputError, match="asked twice"):
        config.check()


def test_batch_rows_take_semicolon_separated_queries(tmp_path: Path) -> None:
    pair = {"before": "a.tif", "after": "b.tif"}
    rows = [
        {**pair, "query": "new buildings; new roads", "output": "1.gpkg"},
        {**pair, "query": "new roads", "output": "2.gpkg"},
    ]
    planned = batch_configs(rows, DetectConfig(before="", after=""))
    first, second = (row.config for row in planned)
    assert first is not None and second is not None
    assert first.query_list() == ("new buildings", "new roads")
    assert second.query == "new roads" and second.queries == ()


def test_several_queries_in_one_run_equal_one_run_per_query(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    pair = make_pair(tmp_path / "scene")
    common = {
        "before": pair.before,
        "after": pair.after,
        "model": str(tiny_checkpoint),
        "tile_size": 128,
        "overlap": 16,
        "batch_size": 3,
        "device": "cpu",
        "threshold": 1e-6,  # an untrained model: every valid pixel counts
    }
    output, mask = tmp_path / "changes.gpkg", tmp_path / "mask.tif"
    result = detect(DetectConfig(queries=QUERIES, output=output, mask_out=mask, **common))
    assert result.queries == QUERIES and result.query_used

    table = gpd.read_file(output, layer="changes")
    assert list(dict.fromkeys(table["query"])) == list(QUERIES)
    assert table["id"].tolist() == list(range(1, len(table) + 1))
    layers = [name for name, _ in pyogrio.list_layers(output)]
    assert layers == ["changes", *layer_names("changes", QUERIES)]
    for name, query in zip(layers[1:], QUERIES, strict=True):
        assert len(gpd.read_file(output, layer=name)) == (table["query"] == query).sum()

    with rasterio.open(mask) as raster:
        assert raster.count == 3
        assert raster.descriptions == ("new buildings", "new roads", "any change")
        together = raster.read()
    for band, query in enumerate(QUERIES):
        alone = tmp_path / f"alone-{band}.tif"
        detect(DetectConfig(query=query, mask_out=alone, **common))
        with rasterio.open(alone) as raster:
            np.testing.assert_allclose(together[band], raster.read(1), rtol=0, atol=1e-5)


def test_cli_repeats_q_for_several_queries_and_writes_a_band_each(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "scene")
    output, mask = tmp_path / "changes.geojson", tmp_path / "mask.tif"
    done = run_mtrs(
        "detect", pair.before, pair.after, "-q", "new buildings", "-q", "new roads; new roads",
        "-o", output, "--mask-out", mask, "--mask-type", "binary", "--tile-size", 128,
        "--model", "cva",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert "ignores the queries 'new buildings', 'new roads'" in done.err
    table = gpd.read_file(output)
    counts = table["query"].value_counts()
    assert counts["new buildings"] == counts["new roads"] > 0  # cva: one answer for both
    with rasterio.open(mask) as raster:
        assert raster.count == 2 and raster.dtypes == ("uint8", "uint8")
        assert raster.descriptions == ("new buildings", "new roads")
        bands = raster.read()
    np.testing.assert_array_equal(bands[0], bands[1])
    assert set(np.unique(bands)) <= {0, 1, 255}


def test_every_query_asked_gets_its_layer_even_when_nothing_changed(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "scene", changes=[])
    output = tmp_path / "changes.gpkg"
    config = DetectConfig(
        before=pair.before, after=pair.before, queries=("new buildings", "new roads"),
        output=output, model="cva", tile_size=128,
    )  # fmt: skip
    assert detect(config).polygons == 0
    layers = [name for name, _ in pyogrio.list_layers(output)]
    assert layers == ["changes", *layer_names("changes", ("new buildings", "new roads"))]
    for name in layers:
        info = pyogrio.read_info(output, layer=name)
        assert info["features"] == 0 and "query" in list(info["fields"])


def test_a_query_list_from_qgis_reaches_the_engine_as_several_queries(tmp_path: Path) -> None:
    from mtrs_geo.serve import config_from_json
    from qgis_plugin.runner import DetectRequest
    from qgis_plugin.worker import request_config

    request = DetectRequest(
        before="a.tif", after="b.tif", query="new buildings; new roads", output="c.gpkg"
    )
    assert request_config(request)["query"] == "new buildings; new roads"
    config = config_from_json(request_config(request))
    assert config.query_list() == ("new buildings", "new roads")
    args = request.cli_args()
    assert args[args.index("--query") + 1] == "new buildings; new roads"
    lines = DetectConfig(before="a", after="b", query="new buildings\n\ncleared vegetation\n")
    assert lines.query_list() == ("new buildings", "cleared vegetation")
