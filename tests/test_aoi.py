"""Area of interest: an extent and/or polygons limit a run to part of the pair."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from scenes import BASE_CRS, make_pair

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.pipeline import detect


def detected(path: Path) -> shapely.Geometry:
    return shapely.union_all(gpd.read_file(path).to_crs(BASE_CRS).geometry.to_numpy())


def test_an_extent_crops_the_grid_and_keeps_the_changes_inside(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    first = pair.changes[0]
    box = shapely.box(*first.buffer(60.0).bounds)
    output = tmp_path / "extent.gpkg"
    config = DetectConfig(
        model="cva",
        before=pair.before, after=pair.after, output=output, mask_out=tmp_path / "p.tif",
        tile_size=64, overlap=8, extent=box.bounds,
    )  # fmt: skip
    result = detect(config)
    assert result.grid.width * result.grid.height < 256 * 256 // 4
    found = detected(output)
    assert found.intersection(first).area > 0.8 * first.area
    assert box.buffer(10.0).contains(found)


def test_an_extent_in_another_crs_is_transformed(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    first = pair.changes[0]
    lonlat = gpd.GeoSeries([first.buffer(60.0)], crs=BASE_CRS).to_crs("EPSG:4326")
    output = tmp_path / "c.gpkg"
    config = DetectConfig(
        model="cva",
        before=pair.before, after=pair.after, output=output, tile_size=64, overlap=8,
        extent=tuple(lonlat.total_bounds), extent_crs="EPSG:4326",
    )  # fmt: skip
    detect(config)
    assert detected(output).intersection(first).area > 0.8 * first.area


def test_polygons_limit_the_run_to_their_inside(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    first, second = pair.changes[:2]
    area = tmp_path / "area.gpkg"
    gpd.GeoDataFrame(geometry=[first.buffer(30.0)], crs=BASE_CRS).to_file(area)
    output = tmp_path / "c.gpkg"
    config = DetectConfig(
        model="cva",
        before=pair.before,
        after=pair.after,
        output=output,
        tile_size=64,
        overlap=8,
        aoi=area,
    )
    detect(config)
    found = detected(output)
    assert found.intersection(first).area > 0.8 * first.area
    assert found.intersection(second).area == 0.0
    assert first.buffer(45.0).contains(found)


def test_an_area_outside_the_pair_or_upside_down_is_refused(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    base = {"before": pair.before, "after": pair.after, "output": tmp_path / "c.gpkg"}
    with pytest.raises(InputError, match="does not overlap"):
        detect(DetectConfig(model="cva", **base, extent=(0.0, 0.0, 10.0, 10.0)))
    with pytest.raises(InputError, match="xmin < xmax"):
        DetectConfig(model="cva", **base, extent=(10.0, 0.0, 0.0, 10.0)).check()
    with pytest.raises(InputError, match="does not exist"):
        DetectConfig(model="cva", **base, aoi=tmp_path / "missing.gpkg").check()
