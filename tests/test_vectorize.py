"""Block-wise polygonization: pieces cut by strip edges merge, holes stay, nodata never counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from polygons_from_raster import polygons_from_probability
from rasterio.features import shapes
from scipy import ndimage

from mtrs_geo.grid import Panel
from mtrs_geo.vectorize import (
    StreamingVectorizer,
    _components,
    _piece_polygons,
    change_blocks,
    default_block_rows,
    iter_regions,
    join_at_seam,
    label_changes,
    pack_blocks,
    strip_bounds,
)

PIXEL = 10.0
ORIGIN = (500_000.0, 5_000_000.0)


def write_probability(path: Path, values: np.ndarray, nodata: float = -1.0) -> Path:
    height, width = values.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs="EPSG:32633",
        transform=Affine(PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1]),
        nodata=nodata,
        tiled=True,
        blockxsize=16,
        blockysize=16,
    ) as dst:
        dst.write(values.astype(np.float32), 1)
    return path


def ring_with_tail(height: int = 40, width: int = 30) -> np.ndarray:
    """A square ring (one hole) on rows 4..27 with a tail down to row 36; scores vary by row."""
    values = np.zeros((height, width), dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    values[4:28, 5:25] = 0.6 + 0.3 * rows[4:28]
    values[10:22, 11:19] = 0.1  # the hole: below the threshold
    values[28:37, 14:17] = 0.8
    return values


def test_shape_cut_by_strip_edges_comes_back_as_one_polygon(tmp_path: Path) -> None:
    values = ring_with_tail()
    path = write_probability(tmp_path / "prob.tif", values)
    changed = values >= 0.5

    result = polygons_from_probability(path, threshold=0.5, block_rows=7)

    assert len(result) == 1
    polygon = result.geometry.iloc[0]
    assert polygon.geom_type == "Polygon" and polygon.is_valid
    assert polygon.area == pytest.approx(changed.sum() * PIXEL * PIXEL)
    assert result["mean_score"].iloc[0] == pytest.approx(values[changed].mean(), rel=1e-6)
    assert result["pixel_count"].iloc[0] == changed.sum()
    assert len(polygon.interiors) == 1  # the hole crosses two strip edges and is kept
    assert shapely.Polygon(polygon.interiors[0]).area == pytest.approx(12 * 8 * PIXEL * PIXEL)


def test_polygon_lands_on_its_pixels_in_map_coordinates(tmp_path: Path) -> None:
    values = np.zeros((30, 20), dtype=np.float32)
    values[3:9, 4:7] = 0.9
    path = write_probability(tmp_path / "prob.tif", values)

    result = polygons_from_probability(path, threshold=0.5, block_rows=4)

    x0, y0 = ORIGIN
    assert result.crs.to_epsg() == 32633
    assert result.geometry.iloc[0].bounds == pytest.approx(
        (x0 + 4 * PIXEL, y0 - 9 * PIXEL, x0 + 7 * PIXEL, y0 - 3 * PIXEL)
    )


def test_two_arms_joining_below_and_one_region_splitting_are_single_polygons() -> None:
    u_shape = np.zeros((20, 12), dtype=np.float32)
    u_shape[0:18, 1:3] = 0.9  # left arm
    u_shape[0:18, 8:10] = 0.7  # right arm
    u_shape[16:18, 1:10] = 0.8  # the arms join only in the last strip
    n_shape = u_shape[::-1].copy()  # the region splits into two arms going down

    for values in (u_shape, n_shape):
        strips = [(row, values[row : row + 3]) for row in range(0, values.shape[0], 3)]
        regions = list(iter_regions(strips, threshold=0.5))
        assert len(regions) == 1
        polygon, score, count = regions[0]
        changed = values >= 0.5
        assert count == changed.sum()
        assert polygon.area == pytest.approx(changed.sum())
        assert score == pytest.approx(values[changed].mean(), rel=1e-6)
        assert len(polygon.interiors) == 0


@pytest.mark.parametrize("seed", range(6))
def test_strip_by_strip_equals_whole_raster_polygonization(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(20, 50, size=2)
    values = rng.random((height, width)).astype(np.float32)
    values[rng.random((height, width)) < 0.05] = -1.0
    block_rows = int(rng.integers(1, 9))
    strips = [(row, values[row : row + block_rows]) for row in range(0, height, block_rows)]

    regions = list(iter_regions(strips, threshold=0.45))

    binary = (values >= 0.45).astype(np.uint8)
    reference = [shapely.geometry.shape(g) for g, _ in shapes(binary, mask=binary > 0)]
    assert len(regions) == len(reference)
    assert sorted(p.area for p, _, _ in regions) == pytest.approx(sorted(r.area for r in reference))
    union = shapely.union_all([p for p, _, _ in regions])
    assert union.symmetric_difference(shapely.union_all(reference)).area == pytest.approx(0.0)
    assert sum(count for _, _, count in regions) == binary.sum()
    assert all(p.geom_type == "Polygon" and p.is_valid for p, _, _ in regions)


def test_nodata_pixels_are_never_polygonized(tmp_path: Path) -> None:
    # nodata 1.0 is above the threshold: only the nodata mask keeps these pixels out.
    values = np.zeros((24, 24), dtype=np.float32)
    values[2:10, 2:10] = 1.0
    values[12:20, 12:20] = 0.75
    values[12:20, 20:22] = np.nan
    path = write_probability(tmp_path / "prob.tif", values, nodata=1.0)

    result = polygons_from_probability(path, threshold=0.5, block_rows=5)

    assert len(result) == 1
    assert result["pixel_count"].iloc[0] == 64
    assert result["mean_score"].iloc[0] == pytest.approx(0.75)


def test_default_nodata_border_of_the_probability_raster_is_ignored(tmp_path: Path) -> None:
    values = np.full((32, 32), -1.0, dtype=np.float32)
    values[4:28, 4:28] = 0.2
    values[10:14, 10:20] = 0.95
    path = write_probability(tmp_path / "prob.tif", values)

    result = polygons_from_probability(path, threshold=0.5)

    assert list(result["pixel_count"]) == [40]


def test_raster_without_change_gives_an_empty_frame_with_the_crs(tmp_path: Path) -> None:
    path = write_probability(tmp_path / "prob.tif", np.zeros((10, 10), dtype=np.float32))
    result = polygons_from_probability(path, threshold=0.5)
    assert len(result) == 0
    assert result.crs.to_epsg() == 32633
    assert list(result.columns) == ["mean_score", "pixel_count", "geometry"]


def test_default_block_rows_bounds_strip_size() -> None:
    assert default_block_rows(16384) == 128
    assert default_block_rows(100) % 64 == 0
    assert default_block_rows(10**7) == 64


def noisy_field(height: int, width: int, seed: int) -> np.ndarray:
    """Blobs of many sizes (some crossing every strip edge), holes, and a nodata band."""
    rng = np.random.default_rng(seed)
    values = ndimage.uniform_filter(rng.random((height, width)), size=5).astype(np.float32)
    values = (values - values.min()) / (values.max() - values.min())
    values[:, width // 3 : width // 3 + 2] = -1.0
    return values


@pytest.mark.parametrize("block_rows", [7, 16, 20, 64])
def test_streamed_rows_give_the_same_table_as_the_finished_raster(
    tmp_path: Path, block_rows: int
) -> None:
    values = noisy_field(101, 57, seed=block_rows)
    path = write_probability(tmp_path / "prob.tif", values)
    with rasterio.open(path) as ds:
        transform, crs = ds.transform, ds.crs
    expected = polygons_from_probability(path, threshold=0.55, block_rows=block_rows)
    streamer = StreamingVectorizer(
        57, 101, transform, crs, 0.55, block_height=16, block_rows=block_rows
    )
    row = 0
    for count in [3, 30, 1, 44, 23]:  # runs of rows unrelated to the strips
        streamer.add_rows(row, values[row : row + count].copy())
        row += count
    result = streamer.result()

    assert len(expected) > 10
    np.testing.assert_array_equal(result["mean_score"], expected["mean_score"])
    np.testing.assert_array_equal(result["pixel_count"], expected["pixel_count"])
    assert (
        shapely.to_wkb(result.geometry.to_numpy()).tolist()
        == shapely.to_wkb(expected.geometry.to_numpy()).tolist()
    )
    assert result.crs == expected.crs


def test_strip_bounds_tile_the_rows_within_whole_block_rows() -> None:
    assert strip_bounds(10, 4, 3) == [(0, 4), (4, 6), (6, 10)]
    bounds = strip_bounds(1300, 128, 512)
    assert bounds[0] == (0, 128) and bounds[-1] == (1280, 1300)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert strip_bounds(1000, 640, 512) == [(0, 640), (640, 1000)]


def test_streamed_rows_must_come_in_order_and_all_arrive() -> None:
    streamer = StreamingVectorizer(8, 8, Affine.identity(), None, 0.5, block_height=8)
    with pytest.raises(ValueError, match="in order"):
        streamer.add_rows(2, np.zeros((2, 8), dtype=np.float32))
    streamer.add_rows(0, np.zeros((4, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="4 of 8"):
        streamer.result()


def test_regions_on_both_sides_of_a_seam_join_along_an_edge_not_at_a_corner() -> None:
    left = [(shapely.box(0, 0, 5, 5), 0.6, 25), (shapely.box(2, 7, 5, 9), 0.8, 6)]
    right = [(shapely.box(5, 2, 8, 4), 1.0, 6), (shapely.box(5, 9, 7, 10), 0.5, 2)]
    joined = join_at_seam(left, right, seam=5)
    assert len(joined) == 3
    (big,) = [r for r in joined if r[2] == 31]
    assert big[0].equals(shapely.union(left[0][0], right[0][0]))
    assert big[1] == pytest.approx((0.6 * 25 + 1.0 * 6) / 31)
    # The corner contact at (5, 9) is not 4-connected: both regions stay apart.
    assert left[1] in joined and right[1] in joined


def test_one_region_left_of_a_seam_bridges_two_pieces_right_of_it() -> None:
    u_bend = shapely.box(0, 0, 4, 10).difference(shapely.box(0, 3, 2, 7))
    right = [(shapely.box(4, 0, 6, 2), 0.5, 4), (shapely.box(4, 8, 6, 10), 0.5, 4)]
    (joined,) = join_at_seam([(u_bend, 0.9, 32)], right, seam=4)
    assert joined[2] == 40 and joined[0].area == 40


@pytest.mark.parametrize("block_rows", [7, 64])
def test_panels_give_the_same_regions_as_one_pass(block_rows: int) -> None:
    values = noisy_field(101, 57, seed=11)
    one_pass = StreamingVectorizer(
        57, 101, Affine.identity(), None, 0.55, 16, block_rows=block_rows
    )
    one_pass.add_rows(0, values)
    # Tile columns at 0, 16, 32, 36 (16 px tiles, 4 px overlap, last snapped); panels of one or two.
    panels = [Panel(0, 36, 32, ()), Panel(32, 20, 4, ()), Panel(36, 21, 21, ())]
    streamer = StreamingVectorizer(
        57, 101, Affine.identity(), None, 0.55, 16, block_rows=block_rows, panels=panels
    )
    for panel in panels:
        own = values[:, panel.col_off : panel.col_off + panel.own_width]
        for row in range(0, 101, 30):  # runs of rows unrelated to the strips
            streamer.add_rows(row, own[row : row + 30].copy(), panel.col_off)

    def canonical(table: gpd.GeoDataFrame) -> list[tuple[tuple[float, ...], int, float, Any]]:
        return sorted(
            (tuple(g.bounds), int(n), round(float(s), 6), g)
            for g, n, s in zip(
                table.geometry, table["pixel_count"], table["mean_score"], strict=True
            )
        )

    expected, result = canonical(one_pass.result()), canonical(streamer.result())
    assert len(expected) > 10
    assert [r[:3] for r in result] == [e[:3] for e in expected]
    # The same regions; a polygon joined across a seam may keep a vertex on it.
    assert all(r[3].equals(e[3]) for r, e in zip(result, expected, strict=True))


def test_rows_of_the_next_panel_wait_until_the_panel_is_complete() -> None:
    panels = [Panel(0, 6, 4, ()), Panel(4, 4, 4, ())]
    streamer = StreamingVectorizer(8, 8, Affine.identity(), None, 0.5, 8, panels=panels)
    streamer.add_rows(0, np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="panel by panel"):
        streamer.add_rows(0, np.zeros((4, 4), dtype=np.float32), 4)


def test_small_regions_are_dropped_while_streaming_but_not_halves_cut_by_a_seam() -> None:
    values = noisy_field(101, 57, seed=11)
    # A region of 2 x 8 pixels cut in two halves of 8 by the seam at column 32.
    values[90:92, 20:50] = 0.0
    values[90:92, 28:36] = 0.9
    one_pass = StreamingVectorizer(57, 101, Affine.identity(), None, 0.55, 16)
    one_pass.add_rows(0, values)
    expected = one_pass.result()
    panels = [Panel(0, 36, 32, ()), Panel(32, 25, 25, ())]
    streamer = StreamingVectorizer(
        57, 101, Affine.identity(), None, 0.55, 16, panels=panels, min_pixels=12
    )
    for panel in panels:
        own = values[:, panel.col_off : panel.col_off + panel.own_width].copy()
        streamer.add_rows(0, own, panel.col_off)
    result = streamer.result()
    kept = expected[expected["pixel_count"] >= 12]
    assert 0 < len(kept) < len(expected)
    assert sorted(result["pixel_count"]) == sorted(kept["pixel_count"])
    assert 16 in set(result["pixel_count"])  # the two halves of 8, joined across the seam


@pytest.mark.parametrize("density", [0.0, 0.002, 0.02, 0.4])
def test_change_blocks_cover_every_change_once_and_label_like_scipy(density: float) -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((96, 400)) < density
    mask[:, 150:200] = False  # an empty band of columns
    mask[40:80, 200:] = False  # and of rows, right of it
    blocks = change_blocks(mask, min_gap=4, split_pixels=0)
    cover = np.zeros(mask.shape, dtype=int)
    for top, bottom, left, right in blocks:
        cover[top:bottom, left:right] += 1
    assert cover.max(initial=0) <= 1 and not (mask & (cover == 0)).any()
    if density > 0:  # the blocks leave the empty bands out
        assert cover[:, 150:200].sum() == 0 and cover[40:80, 200:].sum() == 0
    labels, count = label_changes(mask, blocks)
    expected, expected_count = ndimage.label(mask)  # 4-connected by default
    assert count == expected_count
    assert np.array_equal(labels > 0, mask)
    assert len(set(zip(labels[mask].tolist(), expected[mask].tolist(), strict=True))) == count


def test_change_blocks_are_not_cut_at_bands_cheaper_than_a_block() -> None:
    mask = np.zeros((100, 1000), dtype=bool)
    mask[10:20, 0:10] = mask[10:20, 50:60] = mask[10:20, 900:910] = True
    # 40 empty columns of the strip's 100 rows: 4000 pixels, not worth a call; 840 columns are
    assert change_blocks(mask, min_gap=4, split_pixels=5000) == [
        (10, 20, 0, 60),
        (10, 20, 900, 910),
    ]
    assert len(change_blocks(mask, min_gap=4, split_pixels=0)) == 3


def test_components_of_the_merge_graphs_are_those_scipy_finds() -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    graphs = [(1, np.array([], int), np.array([], int)), (5, np.array([4, 3]), np.array([4, 1]))]
    for _ in range(300):
        nodes, edges = int(rng.integers(1, 60)), int(rng.integers(0, 80))
        graphs.append((nodes, rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)))
    path = rng.permutation(5000)  # a long chain in random order
    graphs.append((5000, path[:-1], path[1:]))
    for nodes, first, second in graphs:
        ones = np.ones(first.size, dtype=np.int8)
        graph = coo_matrix((ones, (first, second)), shape=(nodes, nodes))
        count, component = connected_components(graph, directed=False)
        got_count, got = _components(nodes, first, second)
        assert got_count == count
        assert np.array_equal(got, component)


def test_packed_blocks_keep_a_pixel_of_space_between_them() -> None:
    rng = np.random.default_rng(1)
    sizes = [(int(rng.integers(1, 40)), int(rng.integers(1, 90))) for _ in range(200)]
    places, height, width = pack_blocks(sizes)
    grown = np.zeros((height + 1, width + 1), dtype=np.int32)
    for (row, col), (h, w) in zip(places, sizes, strict=True):
        assert row + h <= height and col + w <= width
        grown[row : row + h + 1, col : col + w + 1] += 1  # each block and a pixel right and below
    assert grown.max() == 1  # no block touches another, even at a corner
    assert height * width < 2 * sum(h * w for h, w in sizes) + 4000  # no shelf left mostly empty


def test_polygons_of_the_packed_blocks_are_those_of_each_block_alone() -> None:
    rng = np.random.default_rng(2)
    mask = ndimage.binary_dilation(rng.random((300, 500)) < 0.002, iterations=3)
    mask[40:60, 40:70] = True
    mask[45:50, 50:55] = False  # a region with a hole
    blocks = change_blocks(mask, min_gap=4, split_pixels=1)
    assert len(blocks) > 20
    labels, _ = label_changes(mask, blocks)
    got_labels, got = _piece_polygons(labels, blocks, row_offset=1000, col_offset=30)
    expected = {}
    for top, bottom, left, right in blocks:
        block = np.ascontiguousarray(labels[top:bottom, left:right])
        place = Affine.translation(30 + left, 1000 + top)
        for geom, value in shapes(block, mask=block > 0, connectivity=4, transform=place):
            expected[int(value)] = shapely.geometry.shape(geom)
    assert sorted(got_labels.tolist()) == sorted(expected)
    assert any(len(polygon.interiors) for polygon in got)
    for label, polygon in zip(got_labels.tolist(), got, strict=True):
        assert polygon.equals(expected[label])
