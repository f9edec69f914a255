import math

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from mtrs_geo.errors import InputError
from mtrs_geo.grid import (
    Grid,
    common_grid,
    grid_offset,
    panel_layout,
    same_lattice,
    sample_windows,
    scene_tiling,
    tile_windows,
)

UTM = CRS.from_epsg(32633)


def utm_grid(x0: float, y0: float, width: int, height: int, res: float = 10.0) -> Grid:
    return Grid(UTM, Affine(res, 0, x0, 0, -res, y0), width, height)


def test_grid_bounds_and_resolution() -> None:
    grid = utm_grid(500_000, 5_001_000, 30, 20)
    assert grid.bounds == (500_000, 5_000_800, 500_300, 5_001_000)
    assert grid.res == (10.0, 10.0)
    assert grid.shape == (20, 30)
    assert grid.window_transform(Window(3, 2, 5, 5)) == Affine(10, 0, 500_030, 0, -10, 5_000_980)


def test_default_common_grid_is_the_intersection_snapped_to_the_before_lattice() -> None:
    before = utm_grid(500_000, 5_001_000, 100, 100)
    # After is offset by 23.7 m east and 41.2 m south: not on before's lattice.
    after = utm_grid(500_023.7, 5_000_958.8, 100, 100, res=12.0)
    grid = common_grid(before, after)
    assert grid.crs == UTM
    assert grid.res == (10.0, 10.0)
    assert same_lattice(before, grid)
    col, row = grid_offset(before, grid)
    assert (col, row) == (2, 4)  # floor(23.7 / 10), floor(41.2 / 10)
    left, bottom, right, top = grid.bounds
    after_left, after_bottom, after_right, after_top = after.bounds
    # Snapped outwards by less than a pixel, never past the before image.
    assert after_left - 10 < left <= after_left
    assert after_top <= top < after_top + 10
    assert right == 501_000  # before's right edge (after reaches further east)
    assert bottom == 5_000_000
    assert grid.width == 98 and grid.height == 96


def test_common_grid_with_an_after_image_in_lonlat_keeps_the_before_crs_and_lattice() -> None:
    before = utm_grid(500_000, 5_001_000, 100, 100)
    lonlat = CRS.from_epsg(4326)
    # A lon/lat image around 15 E, 45.1 N that covers the before image's north-west part.
    after = Grid(lonlat, Affine(0.0001, 0, 14.99, 0, -0.0001, 45.156), 200, 200)
    grid = common_grid(before, after)
    assert grid.crs == UTM
    assert same_lattice(before, grid)
    assert 0 < grid.width <= 100 and 0 < grid.height <= 100


def test_target_crs_and_resolution_give_a_grid_aligned_on_multiples_of_the_pixel() -> None:
    before = utm_grid(500_003, 5_001_007, 100, 100)
    after = utm_grid(500_000, 5_001_000, 100, 100)
    grid = common_grid(before, after, crs="EPSG:3857", resolution=15.0)
    assert grid.crs == CRS.from_epsg(3857)
    assert grid.res == (15.0, 15.0)
    assert math.isclose(grid.transform.c / 15.0, round(grid.transform.c / 15.0), abs_tol=1e-9)
    assert math.isclose(grid.transform.f / 15.0, round(grid.transform.f / 15.0), abs_tol=1e-9)
    # Web Mercator inflates distances by 1/cos(lat) (~1.41 at 45 N): about 1000 * 1.41 / 15 px.
    assert 85 <= grid.width <= 100


def test_resolution_alone_resamples_in_the_before_crs() -> None:
    before = utm_grid(500_000, 5_001_000, 100, 100)
    grid = common_grid(before, before, resolution=20.0)
    assert grid.crs == UTM and grid.res == (20.0, 20.0)
    assert (grid.width, grid.height) == (50, 50)


def test_disjoint_footprints_raise_an_input_error() -> None:
    before = utm_grid(500_000, 5_001_000, 100, 100)
    after = utm_grid(600_000, 5_001_000, 100, 100)
    with pytest.raises(InputError, match="do not overlap"):
        common_grid(before, after)


def test_non_positive_resolution_is_an_input_error() -> None:
    before = utm_grid(500_000, 5_001_000, 10, 10)
    with pytest.raises(InputError, match="resolution"):
        common_grid(before, before, resolution=0.0)


def test_same_lattice_needs_the_same_crs_pixel_size_and_an_integer_offset() -> None:
    image = utm_grid(500_000, 5_001_000, 100, 100)
    assert same_lattice(image, utm_grid(500_030, 5_000_950, 10, 10))
    assert not same_lattice(image, utm_grid(500_035, 5_000_950, 10, 10))
    assert not same_lattice(image, utm_grid(500_030, 5_000_950, 10, 10, res=5.0))
    other_crs = Grid(CRS.from_epsg(32632), image.transform, 100, 100)
    assert not same_lattice(image, other_crs)


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"),
    [
        (1000, 700, 256, 32),
        (256, 256, 256, 0),
        (257, 300, 256, 64),
        (5000, 129, 128, 16),
        (513, 1025, 512, 0),
    ],
)
def test_tile_windows_cover_the_scene_with_full_tiles_and_at_least_the_overlap(
    width: int, height: int, tile: int, overlap: int
) -> None:
    windows = tile_windows(width, height, tile, overlap)
    cover = np.zeros((height, width), dtype=np.int32)
    for w in windows:
        assert (w.width, w.height) == (min(tile, width), min(tile, height))
        assert w.col_off >= 0 and w.row_off >= 0
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
        cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert cover.min() >= 1
    cols = sorted({w.col_off for w in windows})
    rows = sorted({w.row_off for w in windows})
    assert cols[-1] == max(0, width - tile) and rows[-1] == max(0, height - tile)
    for offsets in (cols, rows):
        steps = np.diff(offsets)
        assert (steps <= tile - overlap).all() and (steps > 0).all()
    # Row-major order.
    keys = [(w.row_off, w.col_off) for w in windows]
    assert keys == sorted(keys)


def test_a_scene_smaller_than_a_tile_gives_one_window() -> None:
    assert tile_windows(100, 60, 256, 32) == [Window(0, 0, 100, 60)]


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (-5, 0), (64, 64), (64, -1), (64, 100)])
def test_bad_tile_sizes_are_input_errors(tile: int, overlap: int) -> None:
    with pytest.raises(InputError):
        tile_windows(100, 100, tile, overlap)


def test_sample_windows_are_seeded_and_inside_the_scene() -> None:
    first = sample_windows(1000, 300, 256, 10, seed=3)
    assert first == sample_windows(1000, 300, 256, 10, seed=3)
    assert first != sample_windows(1000, 300, 256, 10, seed=4)
    for w in first:
        assert w.col_off + w.width <= 1000 and w.row_off + w.height <= 300
    assert sample_windows(100, 50, 256, 5) == [Window(0, 0, 100, 50)]  # one distinct position


def test_a_rotated_before_image_gets_a_north_up_grid_over_its_footprint() -> None:
    rotated = Grid(
        UTM,
        Affine.translation(500_000, 5_001_000) @ Affine.rotation(10) @ Affine.scale(10, -10),
        100,
        100,
    )
    assert not rotated.is_north_up
    grid = common_grid(rotated, rotated)
    assert grid.is_north_up and grid.crs == UTM
    left, bottom, right, top = grid.bounds
    r_left, r_bottom, r_right, r_top = rotated.bounds
    assert left <= r_left and right >= r_right and bottom <= r_bottom and top >= r_top
    assert grid.res[0] == pytest.approx(10.0, rel=1e-6)


def test_panels_hold_whole_tile_columns_and_own_the_columns_up_to_the_next_panel() -> None:
    windows = tile_windows(1000, 300, 100, 20)  # columns every 80 px, the last snapped to 900
    panels = panel_layout(windows, 1000, 400)
    assert len(panels) == 3 and all(panel.width <= 400 for panel in panels[:-1])
    # The snapped column stays with its neighbour: the last panel is at most a tile wider.
    assert panels[-1].width <= 400 + 100 and int(panels[-1].windows[-1].col_off) == 900
    assert sorted(w for p in panels for w in p.windows) == sorted(windows)
    for panel in panels:
        rows = [(int(w.row_off), int(w.col_off)) for w in panel.windows]
        assert rows == sorted(rows)  # row-major inside a panel
        assert panel.col_off == min(int(w.col_off) for w in panel.windows)
        assert panel.col_off + panel.width == max(int(w.col_off + w.width) for w in panel.windows)
    owned = [(p.col_off, p.col_off + p.own_width) for p in panels]
    assert owned[0][0] == 0 and owned[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(owned, owned[1:], strict=False))
    # Each panel shares exactly the overlap with the next one, which finishes those columns.
    assert all(p.width - p.own_width == 20 for p in panels[:-1])
    assert panels[-1].width == panels[-1].own_width


def test_a_wide_panel_is_the_whole_scene_and_a_narrow_one_a_single_tile_column() -> None:
    windows = tile_windows(1000, 300, 100, 20)
    (whole,) = panel_layout(windows, 1000, 10_000)
    assert list(whole.windows) == windows and (whole.width, whole.own_width) == (1000, 1000)
    narrow = panel_layout(windows, 1000, 1)
    assert len(narrow) == len({int(w.col_off) for w in windows}) - 1
    assert all(p.width == 100 for p in narrow[:-1])
    assert [int(w.col_off) for w in narrow[-1].windows[:2]] == [880, 900]  # snapped: kept together


def test_a_scene_tiling_holds_every_tile_once_in_its_panels_and_a_pass_over_every_pixel() -> None:
    grid = utm_grid(500_000, 5_000_000, 1000, 300)
    tiling = scene_tiling(grid, 100, 20, panel_width=400)
    assert (tiling.tile_size, tiling.overlap) == (100, 20)
    assert tiling.panels == tuple(panel_layout(tile_windows(1000, 300, 100, 20), 1000, 400))
    assert tiling.windows == [w for panel in tiling.panels for w in panel.windows]
    assert tiling.tiles == len(tile_windows(1000, 300, 100, 20))
    covered = np.zeros((300, 1000), dtype=int)
    for panel in tiling.pass_panels:
        for w in panel.windows:
            covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (covered == 1).all()
    with pytest.raises(InputError, match="overlap"):
        scene_tiling(grid, 100, 100, panel_width=400)


def test_sample_windows_fit_inside_one_block_when_blocks_can_hold_them() -> None:
    windows = sample_windows(1000, 900, 256, 24, seed=3, block=(512, 512), origin=(100, 37))
    assert len(windows) == 24

    def block_of(offset: int, origin: int) -> int:
        return (offset - origin) // 512

    for w in windows:
        assert 0 <= w.col_off and w.col_off + 256 <= 1000 and w.row_off + 256 <= 900
        assert block_of(w.col_off, 37) == block_of(w.col_off + 255, 37)
        assert block_of(w.row_off, 100) == block_of(w.row_off + 255, 100)
    # Spread over the scene, not stuck on block corners.
    assert len({int(w.col_off) % 512 for w in windows}) > 12
    # Strips (a block as wide as the scene), or blocks that would pin the window down, change
    # nothing.
    free = sample_windows(1000, 900, 256, 24, 3)
    assert sample_windows(1000, 900, 256, 24, 3, block=(8, 1000)) == free
    assert sample_windows(1000, 900, 256, 24, 3, block=(256, 256)) == free
