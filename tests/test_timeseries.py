"""More than two dates: each consecutive pair compared on one grid, polygons dated by interval."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import shapely
from affine import Affine
from cli_run import run_mtrs
from rasterio.crs import CRS
from scenes import default_changes, default_extent, make_pair

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.grid import Grid
from mtrs_geo.pipeline import describe_pair, detect
from mtrs_geo.timeseries import (
    SERIES_SAMPLE_DATES,
    check_time_order,
    series_dates,
    series_grid,
    write_series_sample,
)


def _series(folder: Path) -> tuple[list[Path], list[shapely.Geometry]]:
    """Three dates: nothing, then change A, then A and B (so B appears in the second interval)."""
    extent = default_extent()
    changes = default_changes(extent)
    first = make_pair(folder, changes=[changes[0]], names=("d1.tif", "d2.tif"))
    make_pair(folder, changes=[changes[0], changes[1]], names=("d1.tif", "d3.tif"))
    return [first.before, first.after, folder / "d3.tif"], [changes[0], changes[1]]


def test_known_dates_must_go_forward_in_time() -> None:
    check_time_order(["2019", "", "2019-05-01", "2021-06-01T10:00:00"])
    with pytest.raises(InputError, match=r"image 3 \(2018-01-01\) is dated before image 2"):
        check_time_order(["2017", "2019-05-01", "2018-01-01"])


def test_every_date_is_checked_against_every_earlier_one_not_only_its_neighbour() -> None:
    # Each neighbour overlaps at the year's precision, but June comes before March.
    with pytest.raises(InputError, match=r"image 3 \(2001-03-01\) is dated before image 1"):
        check_time_order(["2001-06-01", "2001", "2001-03-01"])
    check_time_order(["2001-03-01", "2001", "2001-06-01"])


def test_times_with_offsets_are_compared_as_instants() -> None:
    check_time_order(["2001-01-01T10:00:00+02:00", "2001-01-01T09:00:00+00:00"])  # 08:00 UTC first
    with pytest.raises(InputError, match="time order"):
        check_time_order(["2001-01-01T09:00:00+00:00", "2001-01-01T10:00:00+02:00"])
    # A day without a zone against a time with one: the clock times are compared.
    check_time_order(["2001-03-01", "2001-03-01T23:00:00+05:00"])


def test_a_pair_whose_dates_run_backwards_is_refused_however_they_come(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    given = DetectConfig(
        before=pair.before, after=pair.after, before_date="2012-01-01", after_date="2011-01-01"
    )
    with pytest.raises(InputError, match=r"image 2 \(2011-01-01\) is dated before image 1"):
        describe_pair(given)
    with rasterio.open(pair.before, "r+") as ds:
        ds.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2021-06-01")
    with rasterio.open(pair.after, "r+") as ds:
        ds.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2020-06-01")
    with pytest.raises(InputError, match="time order"):
        describe_pair(DetectConfig(before=pair.before, after=pair.after))
    # Dates given in order win over the tags.
    fixed = DetectConfig(
        before=pair.before, after=pair.after, before_date="2020", after_date="2021"
    )
    assert describe_pair(fixed).dates == ("2020", "2021")


def test_messages_name_the_images_of_a_series_by_their_place(tmp_path: Path) -> None:
    images, _ = _series(tmp_path / "scene")
    missing = DetectConfig(
        before=images[0], after=images[1], more_images=(tmp_path / "gone.tif",), model="cva"
    )
    with pytest.raises(InputError, match="third image .*gone.tif does not exist"):
        describe_pair(missing)
    one_band = tmp_path / "one_band.tif"
    with rasterio.open(images[2]) as src:
        profile = {**src.profile, "count": 1}
        band = src.read(1)
    with rasterio.open(one_band, "w", **profile) as out:
        out.write(band, 1)
    mismatched = DetectConfig(
        before=images[0], after=images[1], more_images=(one_band,), model="cva"
    )
    with pytest.raises(
        InputError, match=r"selected in the second image d2.tif, 1 in the third image one_band"
    ):
        describe_pair(mismatched)


def test_dates_come_from_the_user_or_the_tags(tmp_path: Path) -> None:
    images = write_series_sample(tmp_path)
    assert series_dates(images) == list(SERIES_SAMPLE_DATES)
    assert series_dates(images, ["2000", "2001", "2003"]) == ["2000", "2001", "2003"]
    with pytest.raises(InputError, match="2 dates for 3 images"):
        series_dates(images, ["2000", "2001"])


def test_the_series_grid_is_the_first_pairs_lattice_cut_to_every_footprint() -> None:
    crs = CRS.from_epsg(32633)
    first = Grid(crs, Affine(10, 0, 0, 0, -10, 1000), 100, 100)
    second = Grid(crs, Affine(10, 0, 5, 0, -10, 1000), 100, 100)
    third = Grid(crs, Affine(20, 0, 203, 0, -20, 803), 40, 40)
    grid = series_grid([first, second, third])
    assert grid.transform.c == 200 and grid.transform.f == 810  # whole pixels of the first
    assert (grid.width, grid.height) == (80, 81)
    far = Grid(crs, Affine(10, 0, 5000, 0, -10, 1000), 10, 10)
    with pytest.raises(InputError, match="image 3 does not overlap"):
        series_grid([first, second, far])


def test_each_interval_finds_the_change_that_happened_in_it(tmp_path: Path) -> None:
    images, (early, late) = _series(tmp_path / "scene")
    output = tmp_path / "changes.gpkg"
    config = DetectConfig(
        before=images[0],
        after=images[1],
        more_images=(images[2],),
        dates=("2019-05-01", "2020-05-01", "2021-06-01"),
        output=output,
        mask_out=tmp_path / "mask.tif",
        tile_size=128,
        overlap=16,
    )
    result = detect(config)
    assert result.intervals == 2 and result.tiles_total == 2 * 9
    table = gpd.read_file(output)
    assert {"from_date", "to_date"} <= set(table.columns)
    assert "before_date" not in table.columns
    first = table[table["from_date"] == "2019-05-01"]
    second = table[table["from_date"] == "2020-05-01"]
    assert set(first["to_date"]) == {"2020-05-01"} and set(second["to_date"]) == {"2021-06-01"}
    assert set(first["after"]) == {"d2.tif"} and set(second["before"]) == {"d2.tif"}

    def covered(part: gpd.GeoDataFrame, change: shapely.Geometry) -> float:
        return shapely.union_all(part.geometry.to_numpy()).intersection(change).area / change.area

    assert covered(first, early) > 0.8 and covered(first, late) < 0.1
    assert covered(second, late) > 0.8 and covered(second, early) < 0.1
    with rasterio.open(tmp_path / "mask.tif") as mask:
        assert mask.count == 2
        assert mask.descriptions == (
            "2019-05-01 to 2020-05-01: any change",
            "2020-05-01 to 2021-06-01: any change",
        )


def test_images_out_of_time_order_are_refused(tmp_path: Path) -> None:
    images, _ = _series(tmp_path / "scene")
    config = DetectConfig(
        before=images[0],
        after=images[1],
        more_images=(images[2],),
        dates=("2019", "2021", "2020"),
        output=tmp_path / "changes.gpkg",
    )
    with pytest.raises(InputError, match="time order"):
        detect(config)


def test_info_and_detect_on_the_generated_sample_show_every_date(tmp_path: Path) -> None:
    images = write_series_sample(tmp_path / "series")
    shown = run_mtrs("info", *images)
    assert shown.code == 0, shown.err
    assert "dates      2000-03-17, 2001-08-27, 2003-02-06" in shown.out
    description = describe_pair(
        DetectConfig(before=images[0], after=images[1], more_images=(images[2],))
    )
    assert description.dates == SERIES_SAMPLE_DATES and len(description.images) == 3

    output = tmp_path / "changes.geojson"
    done = run_mtrs("detect", *images, "-o", output, "--json", "--dates", "2000,2001,2003")
    assert done.code == 0, done.err
    summary = json.loads(done.out)
    assert summary["intervals"] == 2 and summary["grid"]["dates"] == ["2000", "2001", "2003"]
    table = gpd.read_file(output)
    assert set(zip(table["from_date"], table["to_date"], strict=True)) == {
        ("2000", "2001"),
        ("2001", "2003"),
    }


def test_dates_for_the_wrong_number_of_images_is_a_usage_error(tmp_path: Path) -> None:
    images = write_series_sample(tmp_path / "series")
    done = run_mtrs("detect", *images, "-o", tmp_path / "c.gpkg", "--dates", "2000,2003")
    assert done.code == 2 and "2 dates for 3 images" in done.err


def test_a_series_takes_all_its_dates_not_a_before_and_after_date(tmp_path: Path) -> None:
    config = DetectConfig(
        before=tmp_path / "a.tif",
        after=tmp_path / "b.tif",
        more_images=(tmp_path / "c.tif",),
        before_date="2019",
        output=tmp_path / "changes.gpkg",
    )
    with pytest.raises(InputError, match="one per image"):
        config.check()
