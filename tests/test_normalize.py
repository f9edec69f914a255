import numpy as np
import pytest

from mtrs_geo.normalize import BandStats, band_stats, percentile_stretch, percentiles


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("size", [1, 2, 7, 1000, 200_000])
def test_percentiles_match_numpy_linear_interpolation(dtype: type, size: int) -> None:
    rng = np.random.default_rng(size)
    values = rng.integers(-5 if dtype is np.int16 else 0, 3000, size=size).astype(dtype)
    q = [0.0, 2.0, 33.3, 50.0, 98.0, 100.0]
    expected = np.percentile(values.astype(np.float64), q)
    np.testing.assert_allclose(percentiles(values, q), expected, rtol=0, atol=1e-9)


def test_band_stats_leave_out_invalid_pixels_and_flat_bands_map_to_zero() -> None:
    sample = np.zeros((2, 10, 10), dtype=np.uint8)
    sample[0] = np.arange(100, dtype=np.uint8).reshape(10, 10)
    valid = np.ones((10, 10), dtype=bool)
    valid[5:] = False  # values 50..99 are nodata
    stats = band_stats(sample, valid)
    assert stats.low[0] == pytest.approx(np.percentile(np.arange(50), 2))
    assert stats.high[0] == pytest.approx(np.percentile(np.arange(50), 98))
    assert (stats.low[1], stats.high[1]) == (0.0, 1.0)  # no spread: high = low + 1
    stretched = percentile_stretch(sample, stats)
    assert stretched.dtype == np.float32 and stretched[1].max() == 0.0
    assert stretched[0].min() == 0.0 and stretched[0].max() == 1.0


def test_the_stretch_clips_to_the_unit_range_and_cleans_float_nans() -> None:
    tile = np.array([[[-10.0, 0.0, 5.0, np.nan, 20.0]]], dtype=np.float32)
    out = percentile_stretch(tile, BandStats((0.0,), (10.0,)))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.5, 0.0, 1.0])
