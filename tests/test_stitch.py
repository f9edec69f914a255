from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from scenes import ImageSpec, make_pair

from mtrs_geo.config import DetectConfig
from mtrs_geo.grid import Grid, Tiling, scene_tiling
from mtrs_geo.pipeline import detect
from mtrs_geo.probability_raster import PROBABILITY_NODATA
from mtrs_geo.stitch import StripStitcher, blend_weights


def make_grid(width: int, height: int) -> Grid:
    return Grid(CRS.from_epsg(32633), Affine(10, 0, 500_000, 0, -10, 5_000_000), width, height)


def one_panel(grid: Grid, tile: int, overlap: int) -> Tiling:
    """The grid's tiles in a single panel as wide as the scene."""
    return scene_tiling(grid, tile, overlap, panel_width=grid.width)


@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (256, 32), (33, 32), (16, 0)])
def test_blend_weights_are_positive_symmetric_and_tapered_over_the_overlap(
    tile: int, overlap: int
) -> None:
    w = blend_weights(tile, overlap)
    assert w.shape == (tile, tile) and w.dtype == np.float32
    assert (w > 0).all() and w.max() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    row = w[tile // 2]
    taper = min(overlap, tile // 2)
    assert (np.diff(row[: taper + 1]) > 0).all()  # rising over the overlap
    assert (row[taper : tile - taper] == 1.0).all()


def test_zero_overlap_gives_flat_weights() -> None:
    assert (blend_weights(8, 0) == 1.0).all()


def stitch_tiles(path: Path, grid: Grid, tile: int, overlap: int, value_of: object) -> np.ndarray:
    tiling = one_panel(grid, tile, overlap)
    with StripStitcher(path, grid, tiling) as stitcher:
        for window in tiling.windows:
            prob, valid = value_of(window)  # type: ignore[operator]
            stitcher.add(window, prob, valid)
    with rasterio.open(path) as ds:
        assert ds.dtypes == ("float32",) and ds.nodata == PROBABILITY_NODATA
        assert ds.crs == grid.crs and ds.transform == grid.transform
        return ds.read(1)


def test_a_constant_prediction_stitches_to_the_same_constant_everywhere(tmp_path: Path) -> None:
    grid = make_grid(1100, 1300)  # last row and column snapped; more than one 512-row block

    def constant(window: Window) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(window.height), int(window.width))
        return np.full(shape, 0.3, dtype=np.float32), np.ones(shape, dtype=bool)

    out = stitch_tiles(tmp_path / "p.tif", grid, 256, 48, constant)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_a_smooth_field_is_reproduced_without_seams(tmp_path: Path) -> None:
    grid = make_grid(700, 600)
    rows, cols = np.mgrid[0:600, 0:700]
    field = (0.5 + 0.4 * np.sin(cols / 50.0) * np.cos(rows / 70.0)).astype(np.float32)

    def crop(window: Window) -> tuple[np.ndarray, np.ndarray]:
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        return field[r : r + h, c : c + w], np.ones((h, w), dtype=bool)

    out = stitch_tiles(tmp_path / "p.tif", grid, 128, 32, crop)
    np.testing.assert_allclose(out, field, atol=1e-5)


def test_invalid_and_uncovered_pixels_are_nodata(tmp_path: Path) -> None:
    grid = make_grid(300, 1200)

    def left_half_valid(window: Window) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(window.height), int(window.width))
        valid = np.zeros(shape, dtype=bool)
        valid[:, : max(0, 150 - int(window.col_off))] = True
        return np.full(shape, 0.9, dtype=np.float32), valid

    path = tmp_path / "p.tif"
    tiling = one_panel(grid, 100, 20)
    with StripStitcher(path, grid, tiling) as stitcher:
        for window in tiling.windows:
            if window.row_off >= 700:  # tiles skipped as all-nodata leave a gap
                continue
            stitcher.add(window, *left_half_valid(window))
    with rasterio.open(path) as ds:
        out = ds.read(1)
    np.testing.assert_allclose(out[:700, :150], 0.9, rtol=1e-6)
    assert (out[:, 150:] == PROBABILITY_NODATA).all()
    assert (out[740:] == PROBABILITY_NODATA).all()  # the last added tile row ends at 740


def test_the_strip_holds_one_tile_height_not_the_scene(tmp_path: Path) -> None:
    grid = make_grid(200, 5000)
    with StripStitcher(tmp_path / "p.tif", grid, one_panel(grid, 128, 16)) as stitcher:
        assert stitcher._sum.shape == (128, 200)


def test_tiles_out_of_row_major_order_are_refused(tmp_path: Path) -> None:
    grid = make_grid(100, 100)
    with StripStitcher(tmp_path / "p.tif", grid, one_panel(grid, 50, 0)) as stitcher:
        ones = np.ones((50, 50), dtype=np.float32)
        stitcher.add(Window(0, 50, 50, 50), ones, ones > 0)
        with pytest.raises(ValueError, match="row-major"):
            stitcher.add(Window(0, 0, 50, 50), ones, ones > 0)


def test_tile_size_256_and_2048_give_the_same_mask(tmp_path: Path) -> None:
    pair = make_pair(
        tmp_path / "scene",
        after=ImageSpec(crs="EPSG:4326", nodata=0, nodata_border=6),
        extent=(500_000.0, 5_000_000.0, 507_000.0, 5_006_000.0),  # 700 x 600 px at 10 m
    )
    masks = []
    for tile in (256, 2048):
        out = tmp_path / f"prob_{tile}.tif"
        config = DetectConfig(
            model="cva",
            before=pair.before,
            after=pair.after,
            mask_out=out,
            tile_size=tile,
            overlap=32,
        )
        result = detect(config)
        assert result.tiles_total == (9 if tile == 256 else 1)
        with rasterio.open(out) as ds:
            masks.append(ds.read(1) >= 0.5)
    small, large = masks
    iou = (small & large).sum() / (small | large).sum()
    assert small.sum() > 10_000
    assert iou >= 0.99


def test_rows_handed_on_are_the_rows_written_and_no_path_writes_nothing(tmp_path: Path) -> None:
    grid = make_grid(300, 700)  # strips of 100 rows, tiles every 80 rows: runs cross blocks
    rng = np.random.default_rng(3)

    def noisy(window: Window) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(window.height), int(window.width))
        return rng.random(shape, dtype=np.float32), rng.random(shape) > 0.05

    tiling = one_panel(grid, 100, 20)
    tiles = [(w, *noisy(w)) for w in tiling.windows]
    handed: list[tuple[int, np.ndarray]] = []
    path = tmp_path / "p.tif"
    with StripStitcher(
        path, grid, tiling, lambda row, col, rows: handed.append((row, rows.copy()))
    ) as s:
        for window, prob, valid in tiles:
            s.add(window, prob, valid)
    assert [row for row, _ in handed] == np.cumsum([0] + [len(r) for _, r in handed[:-1]]).tolist()
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(np.concatenate([r for _, r in handed]), ds.read(1))

    again: list[np.ndarray] = []
    with StripStitcher(None, grid, tiling, lambda row, col, rows: again.append(rows.copy())) as s:
        for window, prob, valid in tiles:
            s.add(window, prob, valid)
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate([r for _, r in handed]))
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]


@pytest.mark.parametrize("panel_width", [1, 250, 420])
def test_panels_stitch_the_same_raster_as_one_pass(tmp_path: Path, panel_width: int) -> None:
    grid = make_grid(700, 300)
    windows = one_panel(grid, 100, 20).windows
    rng = np.random.default_rng(5)
    predictions = {
        (int(w.row_off), int(w.col_off)): (
            rng.random((100, 100), dtype=np.float32),
            rng.random((100, 100)) > 0.05,
        )
        for w in windows
    }
    # Tiles whose windows were all nodata never reach the stitcher: a whole tile column here.
    kept = [w for w in windows if int(w.col_off) != 320]
    one_pass = tmp_path / "one.tif"
    with StripStitcher(one_pass, grid, one_panel(grid, 100, 20)) as stitcher:
        for w in kept:
            stitcher.add(w, *predictions[(int(w.row_off), int(w.col_off))])

    tiling = scene_tiling(grid, 100, 20, panel_width)
    panels = tiling.panels
    assert len(panels) > 1
    handed = np.full((grid.height, grid.width), np.nan, dtype=np.float32)

    def take(row: int, col: int, rows: np.ndarray) -> None:
        assert np.isnan(handed[row : row + len(rows), col : col + rows.shape[1]]).all()
        handed[row : row + len(rows), col : col + rows.shape[1]] = rows

    by_panel = tmp_path / "panels.tif"
    with StripStitcher(by_panel, grid, tiling, take) as stitcher:
        for panel in panels:
            for w in panel.windows:
                if w in kept:
                    stitcher.add(w, *predictions[(int(w.row_off), int(w.col_off))])
    with rasterio.open(one_pass) as a, rasterio.open(by_panel) as b:
        expected, result = a.read(1), b.read(1)
    np.testing.assert_array_equal(result == PROBABILITY_NODATA, expected == PROBABILITY_NODATA)
    assert (expected == PROBABILITY_NODATA).any()  # the missing column left a nodata gap
    np.testing.assert_allclose(result, expected, atol=1e-6)
    np.testing.assert_array_equal(handed, result)  # every pixel handed on once, as written


def test_tiles_of_an_earlier_panel_are_refused(tmp_path: Path) -> None:
    grid = make_grid(400, 200)
    tiling = scene_tiling(grid, 100, 20, panel_width=200)
    panels = tiling.panels
    tile = np.zeros((100, 100), np.float32), np.ones((100, 100), bool)
    with StripStitcher(None, grid, tiling) as stitcher:
        stitcher.add(panels[1].windows[0], *tile)
        with pytest.raises(ValueError, match="panel by panel"):
            stitcher.add(panels[0].windows[0], *tile)


def test_answers_that_do_not_depend_on_the_tile_are_kept_bit_for_bit_without_blending() -> None:
    grid = make_grid(300, 260)
    tiling = scene_tiling(grid, 64, 16, panel_width=100)  # several panels and their seams
    answer = np.random.default_rng(3).random((grid.height, grid.width), dtype=np.float32)
    answer[:20, :30] = PROBABILITY_NODATA  # nothing valid there
    rows: dict[str, np.ndarray] = {}
    for blend in (True, False):
        out = np.full((grid.height, grid.width), np.nan, dtype=np.float32)

        def take(first_row: int, first_col: int, values: np.ndarray, out: np.ndarray = out) -> None:
            out[first_row : first_row + len(values), first_col : first_col + values.shape[1]] = (
                values
            )

        with StripStitcher(None, grid, tiling, take, blend=blend) as stitcher:
            for window in tiling.windows:
                r, c, h, w = (
                    int(v) for v in (window.row_off, window.col_off, window.height, window.width)
                )
                tile = answer[r : r + h, c : c + w]
                stitcher.add(window, tile, tile != PROBABILITY_NODATA)
        rows[str(blend)] = out
    assert np.array_equal(rows["False"], answer)  # every pixel, nodata included
    np.testing.assert_allclose(rows["True"], answer, rtol=0, atol=1e-6)  # a blend of equal answers
