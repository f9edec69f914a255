"""Acquisition dates: typed by the user, or read from the rasters' tags, on every polygon."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from scenes import make_pair

from mtrs_geo.config import DetectConfig
from mtrs_geo.dates import acquisition_date, pair_dates, parse_date
from mtrs_geo.errors import InputError
from mtrs_geo.pipeline import detect
from mtrs_geo.sample import sample_pair


def test_dates_are_written_as_iso_8601() -> None:
    assert parse_date("2003:05:17 10:21:04") == "2003-05-17T10:21:04"
    assert parse_date("2003-05-17") == "2003-05-17"
    assert parse_date("2003-05-17T10:21:04.123Z") == "2003-05-17T10:21:04+00:00"
    assert parse_date("2003") == "2003"
    with pytest.raises(InputError, match="after date '17/05/2003' is not a date"):
        parse_date("17/05/2003", "after")


def test_an_offset_is_kept_and_only_t_or_a_space_separates_the_time() -> None:
    assert parse_date("2021-01-01T05:00:00+02:00") == "2021-01-01T05:00:00+02:00"
    assert parse_date("2021-01-01 05:00") == "2021-01-01T05:00:00"
    # Python's own parser reads these as a time of day: they are not dates.
    for text in ("2021-01-01+02:00", "2021-01-01X05:00", "2021-01-01T5"):
        with pytest.raises(InputError, match="is not a date"):
            parse_date(text)


def test_tags_give_the_date_acquisitiondatetime_first(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    with rasterio.open(pair.before, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2019:04:01 10:00:00")
    with rasterio.open(pair.after, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2022:01:01 00:00:00")
        ds.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2021-06-30T09:15:00Z")
    assert acquisition_date(pair.before) == "2019-04-01T10:00:00"
    assert acquisition_date(pair.after) == "2021-06-30T09:15:00+00:00"
    assert acquisition_date(sample_pair()[0]) == "2000"  # ACQUISITION_YEAR
    dates = pair_dates(pair.before, pair.after, None, "2021-07-01")
    assert dates == {"before_date": "2019-04-01T10:00:00", "after_date": "2021-07-01"}


def test_polygons_carry_the_dates_and_empty_text_without_any(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    output = tmp_path / "changes.gpkg"
    config = DetectConfig(
        before=pair.before, after=pair.after, output=output, tile_size=128, overlap=8,
        before_date="2019-04-01",
    )  # fmt: skip
    detect(config)
    frame = gpd.read_file(output)
    assert len(frame) > 0
    assert set(frame["before_date"]) == {"2019-04-01"} and set(frame["after_date"]) == {""}


def test_a_date_that_is_not_one_is_refused_before_any_work(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    config = DetectConfig(
        before=pair.before, after=pair.after, output=tmp_path / "c.gpkg", after_date="soon"
    )
    with pytest.raises(InputError, match="after date 'soon' is not a date"):
        config.check()
