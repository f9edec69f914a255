"""Strip-wise polygonization of the stitched probabilities, with shapes cut by strip edges merged.

The engine hands each run of finished rows to :class:`StreamingVectorizer`, which gathers them into
strips of whole rows (:func:`strip_bounds`): memory follows the panel's width, not the scene's area,
and no probability raster is read back. In each strip the changed pixels (probability >= threshold,
never nodata) are labelled into 4-connected components and each label is polygonized with
:func:`rasterio.features.shapes` in exact pixel coordinates (integers, so the pieces of one region
share their cut edges exactly). Pieces that touch across a strip boundary are joined (connected
components of a small graph per strip, :class:`RegionMerger`); a region is finished, unioned and
emitted as soon as none of its pieces lies on the last row seen. Regions cut by a panel seam are
joined when the panel right of it is done (:func:`join_at_seam`). The finished polygons are then
mapped to the grid's CRS with its affine transform. Each polygon carries the mean probability of
its pixels (sums and counts add up across pieces).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes

from mtrs_geo.areas import valid_polygons
from mtrs_geo.grid import Panel
from mtrs_geo.probability_raster import PROBABILITY_NODATA

if TYPE_CHECKING:
    import geopandas as gpd

# scipy and geopandas are imported where they are first needed (labelling, the polygon table):
# a run reaches its first tile without them.

# 4-connectivity, the same rule as ``rasterio.features.shapes(connectivity=4)``
# (``scipy.ndimage.generate_binary_structure(2, 1)``).
_FOUR_CONNECTED = np.array([[False, True, False], [True, True, True], [False, True, False]])
# Strips hold about this many pixels (~20 B/px while labelling): memory follows the width only.
_STRIP_PIXELS = 2 * 1024 * 1024
# Empty bands of rows or columns wider than this split a strip into separately polygonized blocks.
_MIN_GAP = 32
# A narrower empty band is not worth cutting a block at. Set when every block cost a call of
# rasterio's ``shapes`` (0.6 ms, polygonizing this many pixels at 20 ns each); the blocks of a strip
# now share one call (:func:`_piece_polygons`), and a block still costs a labelling call and its
# bookkeeping. Not re-tuned since.
_SPLIT_PIXELS = 32 * 1024
Block = tuple[int, int, int, int]  # top, bottom, left, right (pixels of a strip)


@dataclass
class _Region:
    """The pieces of one connected region gathered so far (pixel coordinates)."""

    pieces: list[shapely.Polygon] = field(default_factory=list)
    score_sum: float = 0.0
    pixel_count: int = 0

    def absorb(self, other: _Region) -> None:
        """Add another region's pieces and sums to this one."""
        self.pieces.extend(other.pieces)
        self.score_sum += other.score_sum
        self.pixel_count += other.pixel_count

    def polygon(self) -> shapely.Geometry:
        """Return the region's polygon: its only piece, or the union of its touching pieces."""
        if len(self.pieces) == 1:
            return self.pieces[0]
        return shapely.union_all(self.pieces)


def default_block_rows(width: int) -> int:
    """Rows per strip for a raster ``width`` pixels wide: about 2 Mpx, a multiple of 64 (>= 64)."""
    rows = max(64, _STRIP_PIXELS // max(width, 1))
    return int(rows // 64 * 64)


def changed_mask(values: np.ndarray, threshold: float, nodata: float | None) -> np.ndarray:
    """Pixels that count as changed: finite, not nodata, and at or above ``threshold``.

    One comparison over the strip (NaN compares false); nodata and infinities are looked for only
    where they could count, among the few pixels at or above the threshold.
    """
    mask = np.greater_equal(values, threshold)
    if nodata is not None and np.isfinite(nodata) and nodata >= threshold:
        mask &= values != nodata
    if np.isinf(values[mask]).any():  # +inf passes the comparison but is not a probability
        mask &= np.isfinite(values)
    return mask


def label_changes(mask: np.ndarray, blocks: Sequence[Block]) -> tuple[np.ndarray, int]:
    """4-connected labels (int32, 0 = unchanged) and their count, like ``scipy.ndimage.label``.

    Only the ``blocks`` (:func:`change_blocks`) are labelled: no 4-connected region leaves its
    block, and labelling costs per pixel, so a sparse strip costs a fraction of its area. Labels
    are numbered block by block.
    """
    from scipy import ndimage

    labels = np.zeros(mask.shape, dtype=np.int32)
    count = 0
    for top, bottom, left, right in blocks:
        block = labels[top:bottom, left:right]
        found = ndimage.label(mask[top:bottom, left:right], structure=_FOUR_CONNECTED, output=block)
        if found:
            block[block > 0] += count
            count += int(found)
    return labels, count


def _components(nodes: int, first: np.ndarray, second: np.ndarray) -> tuple[int, np.ndarray]:
    """Find the connected components of ``nodes`` nodes joined by edges ``first[i] -- second[i]``.

    Returns the number of components and each node's component.
    """
    # Min-label propagation with pointer jumping (the graphs are the regions touching a strip's or
    # a seam's edge: small); numpy alone, not scipy.sparse.csgraph, whose import took 0.11 s.
    first = np.asarray(first, dtype=np.intp)
    second = np.asarray(second, dtype=np.intp)
    root = np.arange(nodes, dtype=np.intp)
    while True:
        lowest = np.minimum(root[first], root[second])
        joined = root.copy()
        np.minimum.at(joined, first, lowest)
        np.minimum.at(joined, second, lowest)
        np.minimum.at(joined, root, joined)  # a root takes the lowest label of its members
        while True:  # pointer jumping: each node to its root's root, until they settle
            jumped = joined[joined]
            if np.array_equal(jumped, joined):
                break
            joined = jumped
        if np.array_equal(joined, root):
            break
        root = joined
    labels, component = np.unique(root, return_inverse=True)
    return int(labels.size), component.astype(np.int32, copy=False)


def _runs(active: np.ndarray, min_gap: int) -> list[tuple[int, int]]:
    """Return the ``[start, stop)`` ranges of ``active``'s True entries, split at gaps > min_gap."""
    index = np.flatnonzero(active)
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) > min_gap)
    starts = np.concatenate([[index[0]], index[breaks + 1]])
    stops = np.concatenate([index[breaks], [index[-1]]]) + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def change_blocks(
    mask: np.ndarray, min_gap: int = _MIN_GAP, split_pixels: int = _SPLIT_PIXELS
) -> list[Block]:
    """Rectangles ``(top, bottom, left, right)`` that hold every changed pixel of ``mask``.

    Cut recursively at empty bands of columns and of rows wider than ``min_gap`` (an X-Y cut),
    and trimmed to their changes: no 4-connected region crosses an empty band, so each block can
    be labelled and polygonized alone, and sparse changes cost a fraction of the strip's area.
    A band of fewer than ``split_pixels`` pixels is not cut at: a block has a fixed cost (a
    labelling call and its bookkeeping). The blocks come sorted by their left
    column, then their top row.
    """
    blocks: list[Block] = []
    # (block, the axis to cut next: 1 columns, 0 rows, and whether the last cut changed nothing)
    pending: list[tuple[Block, int, bool]] = [((0, mask.shape[0], 0, mask.shape[1]), 1, False)]
    while pending:
        block, axis, settled = pending.pop()
        top, bottom, left, right = block
        runs = _runs(np.asarray(mask[top:bottom, left:right].any(axis=1 - axis)), min_gap)
        if not runs:
            continue
        across = bottom - top if axis == 1 else right - left
        joined = [runs[0]]
        for start, stop in runs[1:]:
            if (start - joined[-1][1]) * across < split_pixels:
                joined[-1] = (joined[-1][0], stop)
            else:
                joined.append((start, stop))
        if axis == 1:
            pieces = [(top, bottom, left + start, left + stop) for start, stop in joined]
        else:
            pieces = [(top + start, top + stop, left, right) for start, stop in joined]
        unchanged = pieces == [block]
        if unchanged and settled:
            blocks.append(block)
            continue
        pending.extend((piece, 1 - axis, unchanged) for piece in pieces)
    return sorted(blocks, key=lambda block: (block[2], block[0]))


def _piece_polygons(
    labels: np.ndarray,
    blocks: Sequence[Block],
    row_offset: int,
    col_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Polygonize a label image: ``(labels, polygons)``, in whole-raster pixel coordinates.

    ``labels`` are numbered block by block (:func:`label_changes`). The blocks are polygonized in
    one call of :func:`rasterio.features.shapes` over a mosaic of them (:func:`pack_blocks`,
    a pixel of zeros between two blocks: no region touches another block's), and the polygons
    are moved back to their blocks: a call costs about 0.75 ms whatever its size (GDAL's setup),
    more than the pixels of most blocks. The polygons are built in bulk from the rings
    (one shapely call per strip, not per polygon: noisy masks have hundreds of thousands of
    regions).
    """
    if not blocks:
        return np.zeros(0, dtype=np.int64), np.empty(0, dtype=object)
    places, height, width = pack_blocks([(b - t, r - left) for t, b, left, r in blocks])
    mosaic = np.zeros((height, width), dtype=np.int32)
    shift_x = np.empty(len(blocks), dtype=np.float64)
    shift_y = np.empty(len(blocks), dtype=np.float64)
    last_label = np.empty(len(blocks), dtype=np.int64)
    for index, ((top, bottom, left, right), (y, x)) in enumerate(zip(blocks, places, strict=True)):
        block = labels[top:bottom, left:right]
        mosaic[y : y + bottom - top, x : x + right - left] = block
        last_label[index] = block.max()
        shift_x[index] = col_offset + left - x + 1
        shift_y[index] = row_offset + top - y + 1
    values: list[int] = []
    coords: list[tuple[float, float]] = []
    ring_lengths: list[int] = []
    rings_per_polygon: list[int] = []
    # Mosaic coordinates one pixel up and left: with the identity transform GDAL's polygonize
    # warns (NotGeoreferencedWarning, in worker threads) that it may drop the transform.
    to_mosaic = Affine.translation(-1.0, -1.0)
    for geom, value in shapes(mosaic, mask=mosaic > 0, connectivity=4, transform=to_mosaic):
        values.append(int(value))
        rings = geom["coordinates"]
        rings_per_polygon.append(len(rings))
        for ring in rings:
            coords.extend(ring)
            ring_lengths.append(len(ring))
    if not values:
        return np.zeros(0, dtype=np.int64), np.empty(0, dtype=object)
    piece_labels = np.asarray(values, dtype=np.int64)
    # Labels run on from block to block: a piece's block is the first whose last label reaches it.
    piece_block = np.searchsorted(last_label, piece_labels, side="left")
    rings_of_polygon = np.repeat(np.arange(len(values)), rings_per_polygon)
    block_of_point = np.repeat(piece_block[rings_of_polygon], ring_lengths)
    points = np.asarray(coords, dtype=np.float64)
    points[:, 0] += shift_x[block_of_point]
    points[:, 1] += shift_y[block_of_point]
    ring_index = np.repeat(np.arange(len(ring_lengths)), ring_lengths)
    rings_array = shapely.linearrings(points, indices=ring_index)
    polygons = shapely.polygons(rings_array, indices=rings_of_polygon)
    return piece_labels, polygons


def pack_blocks(shapes_: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], int, int]:
    """Place ``(height, width)`` blocks on shelves of a mosaic, a pixel of space around each.

    Tallest first, left to right, a new shelf below when a shelf is full; shelves are about as
    wide as the mosaic is tall (at least the widest block). Returns each block's ``(row, col)``
    in the mosaic (input order) and the mosaic's height and width.
    """
    area = sum((h + 1) * (w + 1) for h, w in shapes_)
    shelf_width = max(max(w for _, w in shapes_), int(math.isqrt(area)) + 1)
    places: list[tuple[int, int]] = [(0, 0)] * len(shapes_)
    top = x = shelf_height = width = 0
    for index in sorted(range(len(shapes_)), key=lambda i: -shapes_[i][0]):
        h, w = shapes_[index]
        if x and x + w > shelf_width:  # this shelf is full: the next one below it
            top, x, shelf_height = top + shelf_height + 1, 0, 0
        places[index] = (top, x)
        shelf_height = max(shelf_height, h)
        x += w + 1
        width = max(width, x - 1)
    return places, top + shelf_height, width


class RegionMerger:
    """Polygonizes consecutive strips of a probability raster and joins regions across strips.

    Feed the strips top to bottom with :meth:`add`; each call yields the regions that the strip
    finishes. :meth:`finish` yields the regions still open after the last strip.

    Args:
        threshold: pixels with probability >= threshold are changed.
        nodata: the probability raster's nodata value (never polygonized).
        col_offset: grid column of the strips' first column.

    """

    def __init__(
        self, threshold: float, nodata: float | None = PROBABILITY_NODATA, col_offset: int = 0
    ) -> None:
        self.threshold = threshold
        self.nodata = nodata
        self.col_offset = col_offset
        self._open: dict[int, _Region] = {}  # regions with a piece on the last row read, by key
        self._previous_last_row: np.ndarray | None = None  # region keys on the last row (0: none)
        self._next_key = 1

    def add(
        self, row_offset: int, values: np.ndarray
    ) -> Iterator[tuple[shapely.Geometry, float, int]]:
        """Polygonize the strip starting at grid row ``row_offset``; yield the finished regions.

        ``values`` is not referenced once the generator is exhausted (a buffer may be reused).
        """
        open_regions = self._open
        previous_last_row = self._previous_last_row
        next_key = self._next_key
        mask = changed_mask(values, self.threshold, self.nodata)
        blocks = change_blocks(mask)
        labels, count = label_changes(mask, blocks)
        # Graph nodes: this strip's labels 1..count -> 0..count-1, then the open regions.
        open_keys = np.sort(np.fromiter(open_regions, dtype=np.int64, count=len(open_regions)))
        nodes = count + open_keys.size
        above_nodes = np.empty(0, dtype=np.int64)
        below_nodes = np.empty(0, dtype=np.int64)
        if previous_last_row is not None and count and open_keys.size:
            first_row = labels[0]
            joined = (previous_last_row > 0) & (first_row > 0)
            pairs = np.unique(
                np.stack([previous_last_row[joined], first_row[joined]], axis=1), axis=0
            )
            above_nodes = count + np.searchsorted(open_keys, pairs[:, 0])
            below_nodes = pairs[:, 1].astype(np.int64) - 1
        components, component = _components(nodes, above_nodes, below_nodes)
        # A region stays open while one of its pieces lies on this strip's last row.
        last_row = labels[-1]
        on_last_row = last_row > 0
        still_open = np.zeros(components, dtype=bool)
        still_open[component[last_row[on_last_row] - 1]] = True
        merged: dict[int, _Region] = {}
        finished: list[tuple[shapely.Geometry, float, int]] = []
        if count:
            changed_labels = labels[mask]
            weights = values[mask].astype(np.float64)
            sums = np.bincount(changed_labels, weights=weights, minlength=count + 1)[1:]
            pixels = np.bincount(changed_labels, minlength=count + 1)[1:]
            piece_labels, polygons = _piece_polygons(labels, blocks, row_offset, self.col_offset)
            piece_nodes = component[piece_labels - 1]
            # Most regions are one finished piece: emit those without any bookkeeping.
            alone = np.bincount(component, minlength=components)[piece_nodes] == 1
            done = alone & ~still_open[piece_nodes]
            for label, polygon in zip(piece_labels[done], polygons[done], strict=True):
                finished.append(
                    (polygon, float(sums[label - 1] / pixels[label - 1]), int(pixels[label - 1]))
                )
            for label, node, polygon in zip(
                piece_labels[~done], piece_nodes[~done], polygons[~done], strict=True
            ):
                region = merged.setdefault(int(node), _Region())
                region.pieces.append(polygon)
                region.score_sum += float(sums[label - 1])
                region.pixel_count += int(pixels[label - 1])
        for position, key in enumerate(open_keys):
            region = open_regions.pop(int(key))
            merged.setdefault(int(component[count + position]), _Region()).absorb(region)
        for node, region in merged.items():
            if still_open[node]:
                open_regions[next_key + node] = region
            else:
                finished.append(
                    (region.polygon(), region.score_sum / region.pixel_count, region.pixel_count)
                )
        previous_last_row = np.zeros(last_row.shape, dtype=np.int64)
        previous_last_row[on_last_row] = next_key + component[last_row[on_last_row] - 1]
        self._previous_last_row = previous_last_row
        self._next_key = next_key + nodes
        # The state is updated before anything is yielded: a caller may stop early.
        yield from finished

    def finish(self) -> Iterator[tuple[shapely.Geometry, float, int]]:
        """Yield the regions still open after the last strip."""
        regions, self._open = self._open, {}
        for region in regions.values():
            yield region.polygon(), region.score_sum / region.pixel_count, region.pixel_count


def iter_regions(
    values_by_strip: Iterable[tuple[int, np.ndarray]],
    threshold: float,
    nodata: float | None = PROBABILITY_NODATA,
) -> Iterator[tuple[shapely.Geometry, float, int]]:
    """Polygonize strips of a probability raster; yield ``(polygon, mean_score, pixel_count)``.

    Args:
        values_by_strip: ``(first_row, values)`` for consecutive strips of rows, top to bottom, each
            ``values`` a ``(rows, width)`` array of probabilities.
        threshold: pixels with probability >= threshold are changed.
        nodata: the probability raster's nodata value (never polygonized).

    Yields:
        One tuple per 4-connected region, the polygon in pixel coordinates ``(column, row)`` of the
        whole raster (holes kept).

    """
    merger = RegionMerger(threshold, nodata)
    for row_offset, values in values_by_strip:
        yield from merger.add(row_offset, values)
    yield from merger.finish()


def strip_bounds(height: int, block_rows: int, block_height: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` of the strips a raster is polygonized in.

    Strips are ``block_rows`` high inside chunks of whole file block rows (``block_height``), so a
    raster read back from disk and the same rows streamed give the same strips, hence the same
    polygons in the same order.
    """
    block_height = max(1, block_height)
    chunk = -(-block_rows // block_height) * block_height
    bounds: list[tuple[int, int]] = []
    for row in range(0, height, chunk):
        stop = min(row + chunk, height)
        bounds.extend((s, min(s + block_rows, stop)) for s in range(row, stop, block_rows))
    return bounds


def to_map_coordinates(geometry: np.ndarray, transform: Affine) -> np.ndarray:
    """Map geometries from pixel ``(column, row)`` coordinates to the raster's CRS."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def apply(xy: np.ndarray) -> np.ndarray:
        col, row = xy[:, 0], xy[:, 1]
        return np.column_stack([a * col + b * row + c, d * col + e * row + f])

    return shapely.transform(geometry, apply)


def region_table(
    regions: Iterable[tuple[shapely.Geometry, float, int]], transform: Affine, crs: object
) -> gpd.GeoDataFrame:
    """Collect ``(polygon, mean_score, pixel_count)`` in pixel coordinates into a GeoDataFrame."""
    polygons: list[shapely.Geometry] = []
    scores: list[float] = []
    counts: list[int] = []
    for polygon, score, count in regions:
        polygons.append(polygon)
        scores.append(score)
        counts.append(count)
    import geopandas as gpd

    geometry = valid_polygons(to_map_coordinates(np.asarray(polygons, dtype=object), transform))
    return gpd.GeoDataFrame(
        {
            "mean_score": np.asarray(scores, dtype=np.float64),
            "pixel_count": np.asarray(counts, dtype=np.int64),
        },
        geometry=gpd.GeoSeries(geometry, crs=crs),
        crs=crs,
    )


Region = tuple[shapely.Geometry, float, int]  # (polygon in pixel coordinates, mean score, pixels)


def join_at_seam(left: list[Region], right: list[Region], seam: int) -> list[Region]:
    """Join the regions on both sides of the pixel column boundary ``x = seam``.

    ``left`` regions end at the seam, ``right`` ones start there (pixel coordinates). Two are one
    4-connected region when their polygons share an edge of positive length on the seam (a
    shared corner is only 8-connected). Returns every region, joined ones as one (their pieces
    unioned, mean scores weighted by pixel counts); transitive joins are followed.
    """
    if not left or not right:
        return [*left, *right]
    regions = [*left, *right]
    geometries = np.asarray([region[0] for region in regions], dtype=object)
    tree = shapely.STRtree(geometries[: len(left)])
    right_index, left_index = tree.query(geometries[len(left) :], predicate="touches")
    shared = shapely.intersection(geometries[len(left) + right_index], geometries[left_index])
    edge = shapely.length(shared) > 0
    nodes = len(regions)
    count, component = _components(nodes, left_index[edge], len(left) + right_index[edge])
    groups: list[list[int]] = [[] for _ in range(count)]
    for index, group in enumerate(component):
        groups[group].append(index)
    joined: list[Region] = []
    for members in groups:
        if len(members) == 1:
            joined.append(regions[members[0]])
            continue
        pixels = sum(regions[i][2] for i in members)
        score = sum(regions[i][1] * regions[i][2] for i in members) / pixels
        joined.append((shapely.union_all(geometries[members]), score, pixels))
    return joined


def _edges(regions: Sequence[Region]) -> tuple[np.ndarray, np.ndarray]:
    """West and east pixel edges of each region (one vectorized call)."""
    bounds = shapely.bounds(np.asarray([r[0] for r in regions], dtype=object)).reshape(-1, 4)
    return bounds[:, 0], bounds[:, 2]


def _subset(regions: Sequence[Region], keep: np.ndarray) -> list[Region]:
    """Return the regions where ``keep`` is true, in order."""
    return [region for region, kept in zip(regions, keep, strict=True) if kept]


def panel_strips(
    panels: Sequence[Panel], height: int, block_height: int, block_rows: int | None = None
) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` of the strips every panel of a layout is polygonized in.

    ``block_rows`` rows (``None``: about 2 Mpx of the widest panel, :func:`default_block_rows`)
    inside whole rows of blocks ``block_height`` high (:func:`strip_bounds`).
    """
    widest = max(panel.own_width for panel in panels)
    return strip_bounds(height, block_rows or default_block_rows(widest), block_height)


class PanelVectorizer:
    """The regions of one panel's own columns, from its rows top to bottom (pixel coordinates).

    One panel of :class:`StreamingVectorizer`; a cluster's worker polygonizes its panel with it
    and the client joins the panels (:class:`SeamJoiner`). Regions under ``min_pixels`` are
    dropped as soon as they are finished, except those on a seam the panel shares with a
    neighbour (they may still grow there).

    Args:
        panels: every panel of the layout (:func:`mtrs_geo.grid.panel_layout`).
        index: the panel polygonized here.
        strips: :func:`panel_strips` of the layout.
        threshold: probability at or above which a pixel is changed.
        nodata: the probability nodata value.
        min_pixels: see above; 0 keeps every region.

    """

    def __init__(
        self,
        panels: Sequence[Panel],
        index: int,
        strips: list[tuple[int, int]],
        threshold: float,
        nodata: float = PROBABILITY_NODATA,
        min_pixels: int = 0,
    ) -> None:
        self.panel = panels[index]
        self._first, self._last = index == 0, index + 1 == len(panels)
        self._strips = strips
        self.min_pixels = min_pixels
        self._merger = RegionMerger(threshold, nodata, self.panel.col_off)
        tallest = max((stop - start for start, stop in strips), default=0)
        self._buffer = np.empty((tallest, self.panel.own_width), dtype=np.float32)
        self._regions: list[Region] = []  # finished (or still open on the panel's seams)
        self._strip = 0  # index into the strips of the strip being filled
        self.rows = 0  # rows added so far (the next row expected)

    def add_rows(self, row_offset: int, values: np.ndarray) -> None:
        """Take the next rows ``[row_offset, row_offset + len(values))`` of the panel's columns."""
        if row_offset != self.rows:
            raise ValueError(f"rows must come in order: expected row {self.rows}, got {row_offset}")
        taken = 0
        while taken < len(values):
            start, stop = self._strips[self._strip]
            count = min(stop - self.rows, len(values) - taken)
            at = self.rows - start
            self._buffer[at : at + count] = values[taken : taken + count]
            taken += count
            self.rows += count
            if self.rows == stop:
                strip = self._buffer[: stop - start]
                self._regions.extend(self._kept(list(self._merger.add(start, strip))))
                self._strip += 1

    def _kept(self, regions: list[Region]) -> list[Region]:
        """Leave out regions under ``min_pixels`` that no panel seam can make larger."""
        if self.min_pixels <= 0 or not regions:
            return regions
        west, east = _edges(regions)
        on_seam = (west == self.panel.col_off) & (not self._first)
        on_seam |= (east == self.panel.col_off + self.panel.own_width) & (not self._last)
        large = np.fromiter((r[2] >= self.min_pixels for r in regions), bool, len(regions))
        return _subset(regions, large | on_seam)

    def regions(self) -> list[Region]:
        """Return the panel's regions, those still open at its last row included (all rows in)."""
        height = self._strips[-1][1] if self._strips else 0
        if self.rows != height:
            raise ValueError(f"only {self.rows} of {height} rows of the panel were added")
        self._buffer = np.empty((0, 0), dtype=np.float32)
        return [*self._regions, *self._merger.finish()]


class SeamJoiner:
    """Joins the regions of a layout's panels, given panel after panel, across their seams.

    Args:
        panels: every panel of the layout.
        min_pixels: regions under this many pixels are left out once no seam can make them grow.

    """

    def __init__(self, panels: Sequence[Panel], min_pixels: int = 0) -> None:
        self.panels = list(panels)
        self.min_pixels = min_pixels
        self._next = 0  # the panel whose regions come next
        self._pending: list[Region] = []  # ending on the seam right of the last panel added
        self._regions: list[Region] = []  # finished for good

    def add_panel(self, regions: list[Region]) -> None:
        """Take the next panel's regions (:meth:`PanelVectorizer.regions`), joined at its seam."""
        panel = self.panels[self._next]
        left_seam, right_seam = panel.col_off, panel.col_off + panel.own_width
        if self._pending:
            at_left = _edges(regions)[0] == left_seam if regions else np.zeros(0, dtype=bool)
            joined = join_at_seam(self._pending, _subset(regions, at_left), left_seam)
            regions = joined + _subset(regions, ~at_left)
        self._next += 1
        if self._next == len(self.panels) or not regions:
            at_right = np.zeros(len(regions), dtype=bool)
        else:
            at_right = _edges(regions)[1] == right_seam
        self._pending = _subset(regions, at_right)
        large = np.fromiter((r[2] >= self.min_pixels for r in regions), bool, len(regions))
        self._regions.extend(_subset(regions, ~at_right & large))

    def table(self, transform: Affine, crs: object) -> gpd.GeoDataFrame:
        """Return the polygon table (:func:`region_table`); every panel must be in."""
        if self._next != len(self.panels):
            raise ValueError(f"only {self._next} of {len(self.panels)} panels were added")
        return region_table(self._regions, transform, crs)


class StreamingVectorizer:
    """Polygonizes a probability raster from its rows as they are produced, top to bottom.

    The rows are gathered into the strips a re-read of the finished raster (written with blocks
    ``block_height`` rows high) would use (:func:`strip_bounds`), so the table is the one
    :func:`iter_regions` gives on that re-read, and memory is one strip. With ``panels`` the rows
    come panel by panel (each panel's own columns, top to bottom, :class:`PanelVectorizer`);
    regions cut by a panel seam are joined when the panel right of it is done
    (:class:`SeamJoiner`): the same regions, in another order. With ``min_pixels``, the regions
    of that table with at least so many pixels.

    Args:
        width: raster width (pixels).
        height: raster height (pixels).
        transform: the raster's affine transform.
        crs: the raster's CRS.
        threshold: probability at or above which a pixel is changed.
        block_height: block height of the raster file the result must match.
        nodata: the probability nodata value.
        block_rows: rows per strip; ``None`` picks about 2 Mpx per strip
            (:func:`default_block_rows` of the widest panel).
        panels: the column panels rows come in (:func:`mtrs_geo.grid.panel_layout`); ``None``:
            one panel as wide as the raster.
        min_pixels: regions of fewer pixels are dropped as soon as they are finished (a region
            cut by a panel seam waits for its other side); 0 keeps every region. Memory then
            follows the regions kept, not the speckle.

    """

    def __init__(
        self,
        width: int,
        height: int,
        transform: Affine,
        crs: object,
        threshold: float,
        block_height: int,
        nodata: float = PROBABILITY_NODATA,
        block_rows: int | None = None,
        panels: Sequence[Panel] | None = None,
        min_pixels: int = 0,
    ) -> None:
        self.height = height
        self.transform = transform
        self.crs = crs
        self.threshold, self.nodata, self.min_pixels = threshold, nodata, min_pixels
        self.panels = list(panels) if panels else [Panel(0, width, width, ())]
        self._strips = panel_strips(self.panels, height, block_height, block_rows)
        self._joiner = SeamJoiner(self.panels, min_pixels)
        self._panel = 0
        self._vectorizer = self._panel_vectorizer(0)

    def _panel_vectorizer(self, index: int) -> PanelVectorizer:
        return PanelVectorizer(
            self.panels, index, self._strips, self.threshold, self.nodata, self.min_pixels
        )

    def add_rows(self, row_offset: int, values: np.ndarray, col_offset: int = 0) -> None:
        """Take the next rows ``[row_offset, row_offset + len(values))`` of a panel's own columns.

        ``col_offset`` is the grid column of the panel's first column.
        """
        if col_offset != self.panels[self._panel].col_off:
            following = [p.col_off for p in self.panels[self._panel + 1 :]]
            rows = self._vectorizer.rows
            if rows != self.height or col_offset not in following:
                raise ValueError(
                    f"rows must come panel by panel: got column {col_offset} at row {rows}"
                )
            while self.panels[self._panel].col_off != col_offset:
                self._joiner.add_panel(self._vectorizer.regions())
                self._panel += 1
                self._vectorizer = self._panel_vectorizer(self._panel)
        self._vectorizer.add_rows(row_offset, values)

    def result(self) -> gpd.GeoDataFrame:
        """Return the polygon table (:func:`region_table`); every row of every panel must be in."""
        rows = self._vectorizer.rows
        if self._panel + 1 != len(self.panels) or rows != self.height:
            raise ValueError(f"only {rows} of {self.height} rows of the last panel were added")
        self._joiner.add_panel(self._vectorizer.regions())
        return self._joiner.table(self.transform, self.crs)
