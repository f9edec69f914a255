"""Issue 11, items 12 and 13: resource bombs are refused with the figures, before any work."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from affine import Affine
from rasterio.windows import Window
from scenes import ImageSpec, make_pair

from mtrs_geo.areas import min_region_pixels
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.grid import GIB, Grid, check_run_size, parse_crs, run_size
from mtrs_geo.pipeline import describe_pair, detect
from mtrs_geo.read import open_raster
from mtrs_geo.tiling import TileStream, check_resources, machine_memory_bytes


def test_a_huge_batch_of_huge_tiles_is_refused_with_the_figure() -> None:
    size = run_size(65536, 65536, 3, 1, 8192, 64, 1024, 4, 4096)
    assert size.batch == 81  # never more slots than tiles
    big = run_size(300_000, 300_000, 3, 1, 8192, 64, 1024, 4, 4096)
    assert big.batch == 1024
    with pytest.raises(InputError) as err:
        check_run_size(big, 8192, 23 * GIB)
    message = str(err.value)
    assert message.startswith("a batch of 1024 tiles of 8192 px needs ~")
    assert "this machine has 23 GiB" in message and "--" not in message
    assert big.batch_bytes >= 768 * GIB


def test_a_resolution_far_below_the_pixels_is_refused_quickly(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, before=ImageSpec(pixel_size_m=10.0))
    start = time.perf_counter()
    for run in (describe_pair, detect):
        config = DetectConfig(
            before=pair.before, after=pair.after, output=tmp_path / "o.gpkg", resolution=0.0001
        )
        with pytest.raises(InputError, match=r"common grid of 25600000 x 25600000 pixels .* GiB"):
            run(config)  # type: ignore[operator]
    assert time.perf_counter() - start < 5.0
    assert not (tmp_path / "o.gpkg").exists()


def test_a_grid_beyond_what_a_raster_can_hold_is_refused() -> None:
    with pytest.raises(InputError, match="more than a raster can hold"):
        check_run_size(run_size(2**32, 10, 3, 1, 512, 64, 4, 4, 4096), 512, 10**15)


def test_huge_tiles_on_a_small_scene_are_estimated_and_refused_when_they_cannot_fit(
    tmp_path: Path,
) -> None:
    pair = make_pair(tmp_path, before=ImageSpec(pixel_size_m=5.0))  # 512 x 512 px
    before, after = open_raster(pair.before), open_raster(pair.after)
    grid = Grid(before.grid.crs, before.grid.transform, 512, 512)
    size = check_resources(before, after, grid, 8192, 8191, 4, 4, 4096, memory_bytes=64 * GIB)
    assert size.tiles == 1 and size.batch == 1
    assert 1.5 * GIB < size.total_bytes < 3 * GIB  # one padded 8192 px tile pair (issue: 2.8 GiB)
    with pytest.raises(InputError, match=r"a batch of 1 tiles of 8192 px needs ~2 GiB"):
        check_resources(before, after, grid, 8192, 8191, 4, 4, 4096, memory_bytes=2 * GIB)
    # The tile stream allocates no more batch slots than there are tiles.
    stream = TileStream(before, after, grid, [Window(0, 0, grid.width, grid.height)], 8192, 1024)
    assert stream.batch_size == 1
    assert machine_memory_bytes() > 0


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_a_minimum_area_that_is_not_a_finite_number_is_refused(
    tmp_path: Path, value: float
) -> None:
    grid = Grid(parse_crs("EPSG:32633"), Affine(10, 0, 500000, 0, -10, 5000000), 10, 10)
    with pytest.raises(InputError, match="minimum area must be a"):
        min_region_pixels(grid, value)
    pair = make_pair(tmp_path)
    config = DetectConfig(
        before=pair.before, after=pair.after, output=tmp_path / "o.gpkg", min_area=value
    )
    with pytest.raises(InputError, match="minimum area must be a"):
        detect(config)
