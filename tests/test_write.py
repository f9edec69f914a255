"""Atomic outputs, vector formats round trip, RFC 7946 GeoJSON, the mask COG, attribute table."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

from mtrs_geo.errors import InputError
from mtrs_geo.write import (
    ATTRIBUTE_COLUMNS,
    atomic_directory,
    atomic_output,
    change_table,
    remove_output,
    write_probability_cog,
    write_vectors,
)

UTM = "EPSG:32633"  # around 15 E, 45 N: longitude and latitude cannot be mistaken for each other


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sample_table() -> gpd.GeoDataFrame:
    ring = shapely.box(500_000, 5_000_000, 500_300, 5_000_300).difference(
        shapely.box(500_100, 5_000_100, 500_200, 5_000_200)
    )
    polygons = gpd.GeoDataFrame(
        {"mean_score": [0.91, 0.62]},
        geometry=[ring, shapely.box(501_000, 5_001_000, 501_050, 5_001_020)],
        crs=UTM,
    )
    return change_table(
        polygons, query="new buildings é", model="cva", before="a.tif", after="b.tif"
    )


# -- atomic_output ---------------------------------------------------------------------------------


def test_complete_write_appears_under_its_name_only_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "out.geojson"
    with atomic_output(target) as partial:
        assert partial.parent == tmp_path and partial.suffix == ".geojson"
        assert partial.name.startswith(".") and ".partial" in partial.name
        partial.write_text("{}")
        assert not target.exists()  # nothing that looks finished while writing
    assert target.read_text() == "{}"
    assert listing(tmp_path) == ["out.geojson"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing_and_keeps_the_old_file(
    tmp_path: Path, error: BaseException
) -> None:
    (tmp_path / "old.gpkg").write_text("previous run")
    with pytest.raises(type(error)), atomic_output(tmp_path / "old.gpkg") as partial:
        partial.write_text("half")
        raise error
    with pytest.raises(type(error)), atomic_output(tmp_path / "new.gpkg") as partial:
        partial.write_text("half")
        raise error
    assert listing(tmp_path) == ["old.gpkg"]
    assert (tmp_path / "old.gpkg").read_text() == "previous run"


def test_block_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "x.fgb"):
        pass
    assert listing(tmp_path) == []


def test_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="output folder does not exist"):
        with atomic_output(tmp_path / "nope" / "x.gpkg"):
            pass


def test_interrupted_shapefile_leaves_no_sidecar(tmp_path: Path, monkeypatch) -> None:
    real_write = pyogrio.write_dataframe

    def write_then_fail(frame, path, **kwargs):  # type: ignore[no-untyped-def]
        real_write(frame, path, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pyogrio, "write_dataframe", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_vectors(sample_table(), tmp_path / "changes.shp")
    assert listing(tmp_path) == []


def test_shapefile_replaces_every_sidecar_of_a_previous_run(tmp_path: Path) -> None:
    (tmp_path / "changes.qix").write_text("stale index")
    write_vectors(sample_table(), tmp_path / "changes.shp")
    names = listing(tmp_path)
    assert {"changes.shp", "changes.shx", "changes.dbf", "changes.prj"} <= set(names)
    assert "changes.qix" not in names
    assert not [n for n in names if "partial" in n]
    remove_output(tmp_path / "changes.shp")
    assert listing(tmp_path) == []


# -- vector formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", [".gpkg", ".fgb", ".shp"])
def test_vector_round_trip_keeps_source_crs_geometry_and_attributes(
    tmp_path: Path, extension: str
) -> None:
    table = sample_table()
    path = write_vectors(table, tmp_path / f"changes{extension}")
    back = gpd.read_file(path).sort_values("id").reset_index(drop=True)  # .fgb: spatial order
    assert back.crs.to_epsg() == 32633
    assert list(back.columns) == [*ATTRIBUTE_COLUMNS, "geometry"]
    assert back["id"].tolist() == [1, 2]
    assert back["query"].tolist() == ["new buildings é"] * 2
    assert back["area_m2"].to_numpy() == pytest.approx(table["area_m2"].to_numpy())
    assert back["mean_score"].to_numpy() == pytest.approx([0.91, 0.62])
    for got, expected in zip(back.geometry, table.geometry, strict=True):
        assert got.normalize().equals_exact(expected.normalize(), 1e-6)
    assert len(back.geometry.iloc[0].interiors) == 1


@pytest.mark.parametrize("extension", [".geojson", ".json"])
def test_geojson_is_rfc7946_lonlat(tmp_path: Path, extension: str) -> None:
    table = sample_table()
    path = write_vectors(table, tmp_path / f"changes{extension}")
    document = json.loads(path.read_text())
    assert "crs" not in document  # RFC 7946: always WGS 84 longitude/latitude, no crs member
    lon, lat = document["features"][0]["geometry"]["coordinates"][0][0]
    assert 14.9 < lon < 15.1 and 45.1 < lat < 45.2
    expected = table.to_crs(4326)
    back = gpd.read_file(path)
    assert back.crs.to_epsg() == 4326
    assert (
        back.geometry.iloc[0].normalize().equals_exact(expected.geometry.iloc[0].normalize(), 1e-6)
    )
    assert document["features"][0]["properties"]["id"] == 1
    assert document["features"][0]["properties"]["before"] == "a.tif"


def test_empty_table_writes_a_valid_empty_layer(tmp_path: Path) -> None:
    empty = sample_table().iloc[0:0]
    for extension in (".geojson", ".gpkg", ".fgb", ".shp"):
        path = write_vectors(empty, tmp_path / f"none{extension}")
        assert len(gpd.read_file(path)) == 0


@pytest.mark.parametrize("name", ["changes.txt", "changes.csv", "changes"])
def test_unknown_extension_is_an_input_error_and_writes_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="unknown vector output extension"):
        write_vectors(sample_table(), tmp_path / name)
    assert listing(tmp_path) == []


# -- attribute table -------------------------------------------------------------------------------


def test_change_table_measures_filters_and_numbers_polygons() -> None:
    polygons = gpd.GeoDataFrame(
        {"mean_score": [0.9, 0.8, 0.7]},
        geometry=[
            shapely.box(500_000, 5_000_000, 500_010, 5_000_010),  # 100 m^2 (grid)
            shapely.box(500_100, 5_000_000, 500_200, 5_000_100),  # 10,000 m^2
            shapely.box(500_300, 5_000_000, 500_320, 5_000_010),  # 200 m^2
        ],
        crs=UTM,
    )
    table = change_table(
        polygons,
        query="q",
        model="m",
        before="b.tif",
        after="a.tif",
        min_area_m2=150.0,
        extra={"run": "r1"},
    )
    assert list(table.columns) == [*ATTRIBUTE_COLUMNS, "run", "geometry"]
    assert table["id"].tolist() == [1, 2]
    assert table["mean_score"].tolist() == [0.8, 0.7]
    # UTM 33N at 15 E is near the central meridian: ground area ~ grid area / 0.9996^2.
    assert table["area_m2"].to_numpy() == pytest.approx([10_000 / 0.9996**2, 200 / 0.9996**2])
    assert table["run"].tolist() == ["r1", "r1"]
    assert table.crs == polygons.crs


# -- mask COG --------------------------------------------------------------------------------------


@pytest.fixture
def probability_tif(tmp_path: Path) -> Path:
    values = np.full((600, 700), 0.2, dtype=np.float32)
    values[100:300, 200:400] = 0.8
    values[:, :50] = -1.0
    path = tmp_path / "probability.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=700,
        height=600,
        count=1,
        dtype="float32",
        crs=UTM,
        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_006_000.0),
        nodata=-1.0,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dst:
        dst.write(values, 1)
    return path


def test_probability_and_binary_cogs(tmp_path: Path, probability_tif: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    prob = write_probability_cog(probability_tif, out / "prob.tif", "probability")
    mask = write_probability_cog(probability_tif, out / "mask.tif", "binary", threshold=0.5)
    with rasterio.open(probability_tif) as src, rasterio.open(prob) as p, rasterio.open(mask) as m:
        for cog in (p, m):
            assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert cog.crs == src.crs and cog.transform == src.transform
            assert cog.overviews(1)
        assert p.dtypes[0] == "float32" and p.nodata == -1.0
        assert np.array_equal(p.read(1), src.read(1))
        assert m.dtypes[0] == "uint8" and m.nodata == 255
        binary = m.read(1)
        assert set(np.unique(binary)) == {0, 1, 255}
        assert (binary[:, :50] == 255).all()
        assert binary[100:300, 200:400].all() and binary[100:300, 200:400].min() == 1
        assert (binary == 1).sum() == 200 * 200
    assert listing(out) == ["mask.tif", "prob.tif"]


def test_cog_needs_a_tif_name(tmp_path: Path, probability_tif: Path) -> None:
    with pytest.raises(InputError, match=r"\.tif"):
        write_probability_cog(probability_tif, tmp_path / "mask.png")
    assert not (tmp_path / "mask.png").exists()


def test_atomic_directory_replaces_a_folder_only_when_the_block_completes(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]

    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_shapefile_cuts_long_field_names_without_a_warning(tmp_path: Path) -> None:
    table = sample_table().assign(before_date="2019-05-01", after_date="2021-06-01")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyogrio's laundering warning would fail the test
        path = write_vectors(table, tmp_path / "changes.shp")
    back = gpd.read_file(path)
    assert set(back["before_dat"]) == {"2019-05-01"} and set(back["after_date"]) == {"2021-06-01"}
