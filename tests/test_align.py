from pathlib import Path

import numpy as np
import pytest
from rasterio.windows import Window
from scenes import ImageSpec, ScenePair, make_pair, planted_mask
from scipy import ndimage

from mtrs_geo.align import AlignedReader
from mtrs_geo.grid import Grid, common_grid
from mtrs_geo.read import RasterInfo, open_raster


def read_whole(info: RasterInfo, grid: Grid) -> tuple[np.ndarray, np.ndarray, bool]:
    with AlignedReader(info, grid) as reader:
        data, valid = reader.read(Window(0, 0, grid.width, grid.height))
        return data, valid, reader.on_lattice


def changed_pixels(pair: ScenePair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detected by differencing the aligned reads, planted on the grid, jointly valid)."""
    before, after = open_raster(pair.before), open_raster(pair.after)
    grid = common_grid(before.grid, after.grid)
    data_b, valid_b, _ = read_whole(before, grid)
    data_a, valid_a, _ = read_whole(after, grid)
    detected = np.abs(data_a - data_b).max(axis=0) > 40  # planted changes move >= 60 DN, texture 0
    planted = planted_mask(
        pair.changes, grid.transform, grid.width, grid.height, grid.crs.to_string()
    )
    return detected, planted, valid_b & valid_a


@pytest.mark.parametrize(
    ("after", "tolerance_px"),
    [
        (ImageSpec(crs="EPSG:4326"), 1),
        (ImageSpec(crs="EPSG:3857", pixel_size_m=6.0), 1),
        (ImageSpec(crs="EPSG:32632", pixel_size_m=4.0), 1),  # the neighbouring UTM zone
        # Coarser and off the lattice: one pixel of the 20 m image is two of the 10 m grid.
        (ImageSpec(pixel_size_m=20.0, shift_px=(0.37, 0.61)), 2),
    ],
    ids=["lonlat", "web-mercator", "utm-32n-4m", "utm-20m-shifted"],
)
def test_after_image_in_another_crs_or_resolution_aligns_within_one_pixel(
    tmp_path: Path, after: ImageSpec, tolerance_px: int
) -> None:
    pair = make_pair(tmp_path, after=after)
    detected, planted, valid = changed_pixels(pair)
    assert valid.mean() > 0.97
    # Every disagreement lies within one pixel (of the coarser image) of a planted edge.
    near_edge = ndimage.binary_dilation(planted, iterations=tolerance_px) & ~ndimage.binary_erosion(
        planted, iterations=tolerance_px
    )
    wrong = (detected != planted) & valid
    assert not (wrong & ~near_edge).any()
    # And the change is found at all.
    assert (detected & planted).sum() > 0.9 * planted.sum()


def test_an_image_on_the_grid_lattice_is_read_with_plain_windows_unchanged(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, changes=[])
    before = open_raster(pair.before)
    grid = common_grid(before.grid, open_raster(pair.after).grid)
    data, valid, on_lattice = read_whole(before, grid)
    assert on_lattice and valid.all()
    import rasterio

    with rasterio.open(pair.before) as ds:
        np.testing.assert_array_equal(data, ds.read().astype(np.float32))


def test_nodata_border_and_internal_mask_are_invalid(tmp_path: Path) -> None:
    pair = make_pair(
        tmp_path,
        before=ImageSpec(nodata=0, nodata_border=7),
        after=ImageSpec(crs="EPSG:3857", pixel_size_m=10.0, mask_border=True, nodata_border=5),
    )
    before, after = open_raster(pair.before), open_raster(pair.after)
    grid = common_grid(before.grid, after.grid)
    data_b, valid_b, _ = read_whole(before, grid)
    data_a, valid_a, _ = read_whole(after, grid)
    assert not valid_b[:7].any() and not valid_b[:, -7:].any()
    assert valid_b[7:-7, 7:-7].all()
    assert (data_b[:, ~valid_b] == 0).all()
    # The after image's masked border (about 5 px) shows up on the grid as an invalid rim.
    assert not valid_a[0].any() and not valid_a[-1].any()
    assert valid_a[12:-12, 12:-12].all()
    assert (data_a[:, ~valid_a] == 0).all()


def test_window_partly_outside_an_image_on_the_lattice_is_invalid_there(tmp_path: Path) -> None:
    # After covers only the eastern half of before's extent, on the same 10 m lattice.
    pair = make_pair(
        tmp_path, after=ImageSpec(extent=(501_280.0, 5_000_000.0, 503_840.0, 5_002_560.0))
    )
    before, after = open_raster(pair.before), open_raster(pair.after)
    grid = before.grid  # read the after image on the full before grid
    data, valid, on_lattice = read_whole(after, grid)
    assert on_lattice
    assert not valid[:, :128].any() and valid[:, 128:].all()
    with AlignedReader(after, grid) as reader:
        outside_data, outside_valid = reader.read(Window(0, 0, 64, 64))
    assert not outside_valid.any() and not outside_data.any()


def test_float_nan_pixels_are_invalid(tmp_path: Path) -> None:
    pair = make_pair(
        tmp_path, before=ImageSpec(dtype="float32", nodata=float("nan"), nodata_border=3)
    )
    before = open_raster(pair.before)
    data, valid, _ = read_whole(before, before.grid)
    assert not valid[:3].any() and valid[3:-3, 3:-3].all()
    assert np.isfinite(data).all()


def _write_uint8(path: Path, data: np.ndarray, **extra: object) -> None:
    import rasterio
    from affine import Affine

    profile = {
        "driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
        "dtype": "uint8", "crs": "EPSG:32633", "transform": Affine(1, 0, 500_000, 0, -1, 5_000_000),
    }  # fmt: skip
    with rasterio.open(path, "w", **{**profile, **extra}) as dst:
        dst.write(data)


@pytest.mark.parametrize("kind", ["none", "nodata", "dataset_mask"])
def test_validity_of_plain_reads_equals_gdal_masks(tmp_path: Path, kind: str) -> None:
    import rasterio

    rng = np.random.default_rng(3)
    data = rng.integers(0, 4, size=(3, 60, 70)).astype(np.uint8)  # many zeros, some all-band
    path = tmp_path / f"{kind}.tif"
    if kind == "nodata":
        _write_uint8(path, data, nodata=0)
    else:
        _write_uint8(path, data)
    if kind == "dataset_mask":
        with rasterio.open(path, "r+") as dst:
            dst.write_mask(np.where(data[0] == 1, 0, 255).astype(np.uint8))
    info = open_raster(path)
    with rasterio.open(path) as src:
        expected = np.all(src.read_masks() > 0, axis=0)
    for window in (Window(0, 0, 70, 60), Window(10, 5, 40, 30), Window(50, 40, 40, 40)):
        with AlignedReader(info, info.grid) as reader:
            got, valid = reader.read_native(window)
        r0, c0 = int(window.row_off), int(window.col_off)
        inside = expected[r0 : r0 + int(window.height), c0 : c0 + int(window.width)]
        h, w = inside.shape
        np.testing.assert_array_equal(valid[:h, :w], inside)
        assert not valid[h:, :].any() and not valid[:, w:].any()
        np.testing.assert_array_equal(
            got[:, :h, :w][:, inside], data[:, r0 : r0 + h, c0 : c0 + w][:, inside]
        )
    assert kind != "nodata" or not expected.all()
