"""Issue 11, items 4 and 10-13: the antimeridian, and bad input that must be one line of ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.grid import Grid, common_grid, parse_crs, unwrap_longitudes
from mtrs_geo.pipeline import describe_pair, detect
from mtrs_geo.read import open_raster

# A planted change on the ground, longitudes in (180, 181): 180.03..180.05 E, 10.03..10.05 N.
PLANT = (180.03, 10.03, 180.05, 10.05)


def write_lonlat(path: Path, west: float, res: float, width: int, north: float = 10.12) -> None:
    """A 3-band uint8 image in EPSG:4326 from ``west``; the texture follows the wrapped ground."""
    transform = Affine(res, 0, west, 0, -res, north)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(width) + 0.5)
    lon, lat = transform * (cols, rows)
    lon = np.where(lon < 0, lon + 360.0, lon)  # the same ground whichever way it is written
    data = np.empty((3, width, width), dtype=np.uint8)
    for band in range(3):
        data[band] = 100 + 60 * np.sin(lon * (300 + 40 * band)) * np.cos(lat * 250)
    profile = dict(
        driver="GTiff", width=width, height=width, count=3, dtype="uint8",
        crs="EPSG:4326", transform=transform,
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def plant(path: Path) -> None:
    """Paint the planted change into an image written by :func:`write_lonlat`."""
    with rasterio.open(path, "r+") as ds:
        data = ds.read()
        cols, rows = np.meshgrid(np.arange(ds.width) + 0.5, np.arange(ds.height) + 0.5)
        lon, lat = ds.transform * (cols, rows)
        lon = np.where(lon < 0, lon + 360.0, lon)
        inside = (lon > PLANT[0]) & (lon < PLANT[2]) & (lat > PLANT[1]) & (lat < PLANT[3])
        data[:, inside] = np.array([240, 20, 240], dtype=np.uint8)[:, None]
        ds.write(data)


@pytest.mark.parametrize("after_res", [0.002, 0.0025])  # the same lattice, and a warped read
def test_a_pair_across_the_antimeridian_is_not_disjoint(tmp_path: Path, after_res: float) -> None:
    before, after = tmp_path / "east.tif", tmp_path / "west.tif"
    write_lonlat(before, 179.9, 0.002, 130)  # 179.9 .. 180.16
    write_lonlat(after, -180.1, after_res, int(round(0.26 / after_res)))  # -180.1 .. -179.84
    plant(after)
    info = describe_pair(DetectConfig(model="cva", before=before, after=after))
    assert info.bounds[0] == pytest.approx(179.9) and info.bounds[2] == pytest.approx(180.16)
    out = tmp_path / "change.gpkg"
    detect(
        DetectConfig(model="cva", before=before, after=after, output=out, tile_size=64, overlap=8)
    )
    found = gpd.read_file(out)
    assert len(found) == 1
    planted = shapely.box(*PLANT)
    assert found.geometry.iloc[0].intersection(planted).area >= 0.8 * planted.area


def test_longitudes_a_turn_apart_are_unwrapped_only_for_geographic_grids() -> None:
    east = Grid(parse_crs("EPSG:4326"), Affine(0.01, 0, 179.9, 0, -0.01, 10), 26, 26)
    west = Grid(east.crs, Affine(0.01, 0, -180.1, 0, -0.01, 10), 26, 26)
    moved = unwrap_longitudes(west, east)
    assert moved.bounds[0] == pytest.approx(179.9)
    assert unwrap_longitudes(east, east) is east
    utm = Grid(parse_crs("EPSG:32633"), Affine(10, 0, -180.1, 0, -10, 10), 26, 26)
    assert unwrap_longitudes(utm, utm) is utm
    assert common_grid(east, west).bounds[0] == pytest.approx(179.9)


def test_a_geographic_raster_beyond_the_pole_is_one_line_of_ours(tmp_path: Path) -> None:
    path = tmp_path / "pole.tif"
    profile = dict(
        driver="GTiff", width=20, height=20, count=1, dtype="uint8", crs="EPSG:4326",
        transform=Affine(1.0, 0, 10, 0, -1.0, 95.0),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((1, 20, 20), dtype=np.uint8))
    with pytest.raises(InputError, match=r"pole\.tif reaches latitude 95.*beyond a pole") as err:
        open_raster(path, role="before")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="beyond a pole"):
        describe_pair(DetectConfig(model="cva", before=path, after=path))


def tiled_image(path: Path, size: int = 512) -> None:
    """A deflate-compressed, 128 px tiled 3-band GeoTIFF of noise."""
    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
        transform=Affine(1, 0, 500000, 0, -1, 5000000), tiled=True, blockxsize=128,
        blockysize=128, compress="deflate",
    )  # fmt: skip
    data = np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_a_truncated_geotiff_is_refused_at_open_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tiled_image(path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(
        InputError, match=r"cannot read before image .*cut\.tif: .*truncated"
    ) as err:
        open_raster(path, role="before")
    assert "\n" not in str(err.value)


def test_a_corrupt_internal_tile_fails_the_run_naming_the_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.tif", tmp_path / "bad.tif"
    tiled_image(good)
    tiled_image(bad)
    with rasterio.open(bad) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    with open(
        bad, "r+b"
    ) as f:  # garbage in a tile in the middle: the header and last tile are fine
        f.seek(offset)
        f.write(b"\xff" * 64)
    config = DetectConfig(
        model="cva", before=good, after=bad, output=tmp_path / "o.gpkg", tile_size=128, overlap=0
    )
    with pytest.raises(
        InputError, match=r"cannot read .*bad\.tif: the file is truncated or corrupt"
    ):
        detect(config)
    assert not (tmp_path / "o.gpkg").exists()


def test_an_unknown_crs_is_one_line_of_ours_and_no_gdal_line(tmp_path: Path) -> None:
    script = (
        "from mtrs_geo.grid import parse_crs\n"
        "from mtrs_geo.errors import InputError\n"
        "try:\n"
        "    parse_crs('EPSG:999999')\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stderr == ""
    assert done.stdout == "'EPSG:999999' is not a known CRS (try EPSG:32633 or EPSG:4326)\n"
