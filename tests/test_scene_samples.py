from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from scenes import ImageSpec, make_pair

from mtrs_geo.errors import InputError
from mtrs_geo.grid import common_grid
from mtrs_geo.read import open_raster
from mtrs_geo.scene_samples import (
    SAMPLE_WINDOWS,
    read_overview_sample,
    read_scene_samples,
    sample_stats,
)


def test_statistics_come_from_overviews_when_the_file_has_them(tmp_path: Path) -> None:
    pair = make_pair(
        tmp_path,
        before=ImageSpec(pixel_size_m=2.0, nodata=0, nodata_border=40),
        extent=(500_000.0, 5_000_000.0, 504_096.0, 5_004_096.0),  # 2048 x 2048 px
        changes=[],
    )
    assert read_overview_sample(open_raster(pair.before), open_raster(pair.before).grid) is None
    with rasterio.open(pair.before, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.average)
    info = open_raster(pair.before)
    assert info.has_overviews
    sample = read_overview_sample(info, info.grid)
    assert sample is not None
    data, valid = sample
    assert data.shape == (3, 1024, 1024) and valid.shape == (1024, 1024)
    assert not valid[:10].any() and valid[40:-40, 40:-40].all()  # the 40 px border, halved
    with rasterio.open(pair.before) as ds:
        full = ds.read()
    reference = sample_stats([(full.astype(np.float32), full.min(axis=0) > 0)])
    stats = sample_stats([sample])
    np.testing.assert_allclose(stats.low, reference.low, atol=3)
    np.testing.assert_allclose(stats.high, reference.high, atol=3)


def test_sample_stats_leave_out_invalid_pixels() -> None:
    data = np.zeros((2, 10, 10), dtype=np.float32)
    data[:, :, 5:] = np.arange(50, dtype=np.float32).reshape(10, 5) + 100
    valid = np.zeros((10, 10), dtype=bool)
    valid[:, 5:] = True
    stats = sample_stats([(data, valid)])
    assert min(stats.low) >= 100
    with pytest.raises(InputError):
        sample_stats([])


def test_scene_samples_are_seeded_windows_no_larger_than_a_tile_in_both_images(
    tmp_path: Path,
) -> None:
    pair = make_pair(tmp_path)
    before, after = open_raster(pair.before), open_raster(pair.after)
    grid = common_grid(before.grid, after.grid)

    samples = read_scene_samples(before, after, grid, tile_size=64)
    again = read_scene_samples(before, after, grid, tile_size=64)

    assert 1 < len(samples.before) == len(samples.after) <= SAMPLE_WINDOWS
    assert all(valid.shape == (64, 64) for _, valid in samples.before + samples.after)
    assert samples.stats == again.stats
    for (data, valid), (data_again, valid_again) in zip(samples.after, again.after, strict=True):
        np.testing.assert_array_equal(data, data_again)
        np.testing.assert_array_equal(valid, valid_again)
