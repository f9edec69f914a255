"""Pure grid geometry: the common grid of an image pair and the window grid that tiles it.

No file is opened here: grids and tilings are values (CRS, affine transform, size; tile windows in
panels) that the readers, the tile stream and the stitcher pass around. Sizes are in pixels,
coordinates in the grid CRS's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from mtrs_geo.errors import InputError

# Tolerance, in pixels, under which a coordinate counts as lying on a pixel edge (float round-off).
_SNAP_EPS = 1e-6
# Points per edge when a footprint is transformed to another CRS (curved edges in the target CRS).
_DENSIFY_PTS = 21

Bounds = tuple[float, float, float, float]  # (left, bottom, right, top)


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform (pixel -> CRS coordinates) and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> Bounds:
        """``(left, bottom, right, top)`` of the grid's footprint in its CRS."""
        corners = [(0, 0), (self.width, 0), (0, self.height), (self.width, self.height)]
        points = [self.transform @ corner for corner in corners]
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units (positive)."""
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    @property
    def is_north_up(self) -> bool:
        """True when the grid has no rotation and rows go from north to south."""
        t = self.transform
        return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0

    def window_transform(self, window: Window) -> Affine:
        """Transform of the pixel window ``window`` of this grid."""
        return self.transform @ Affine.translation(window.col_off, window.row_off)


def same_lattice(image: Grid, grid: Grid) -> bool:
    """Tell whether ``grid``'s pixels are whole pixels of ``image`` (same CRS, size; whole offset).

    An image on the lattice can be read with plain windows, without resampling.
    """
    if image.crs != grid.crs or not (image.is_north_up and grid.is_north_up):
        return False
    ia, ie = image.transform.a, image.transform.e
    ga, ge = grid.transform.a, grid.transform.e
    if not (math.isclose(ia, ga, rel_tol=1e-9) and math.isclose(ie, ge, rel_tol=1e-9)):
        return False
    col = (grid.transform.c - image.transform.c) / ia
    row = (grid.transform.f - image.transform.f) / ie
    return abs(col - round(col)) < _SNAP_EPS and abs(row - round(row)) < _SNAP_EPS


def grid_offset(image: Grid, grid: Grid) -> tuple[int, int]:
    """``(col, row)`` of ``grid``'s first pixel in ``image``'s pixels; both must share a lattice."""
    col = (grid.transform.c - image.transform.c) / image.transform.a
    row = (grid.transform.f - image.transform.f) / image.transform.e
    return (int(round(col)), int(round(row)))


def unwrap_longitudes(image: Grid, reference: Grid) -> Grid:
    """Return ``image`` moved by whole turns of longitude (360 degrees) to overlap ``reference``.

    Two images of a geographic CRS can describe the same ground with longitudes a turn apart (one
    written 179.9..180.16, the other -180.1..-179.84 across the antimeridian). The image's
    transform is shifted by the turn that overlaps ``reference`` most; any other pair (projected
    CRSs, different CRSs, already overlapping) is returned as it is.
    """
    if image.crs != reference.crs or not image.crs.is_geographic:
        return image
    left, _, right, _ = image.bounds
    ref_left, _, ref_right, _ = reference.bounds

    def overlap(shift: float) -> float:
        return min(right + shift, ref_right) - max(left + shift, ref_left)

    best = max((0.0, -360.0, 360.0), key=overlap)  # ties keep the image where it is
    if best == 0.0 or overlap(best) <= overlap(0.0):
        return image
    return Grid(
        image.crs, Affine.translation(best, 0.0) @ image.transform, image.width, image.height
    )


def _intersect(a: Bounds, b: Bounds) -> Bounds | None:
    left, bottom = max(a[0], b[0]), max(a[1], b[1])
    right, top = min(a[2], b[2]), min(a[3], b[3])
    if right <= left or top <= bottom:
        return None
    return (left, bottom, right, top)


def footprint_in(image: Grid, crs: CRS) -> Bounds:
    """Bounds of ``image``'s footprint in ``crs`` (edges densified, so curved edges are covered)."""
    if image.crs == crs:
        return image.bounds
    return transform_bounds(image.crs, crs, *image.bounds, densify_pts=_DENSIFY_PTS)


def _native_resolution(image: Grid, crs: CRS) -> tuple[float, float]:
    """Return the pixel size ``image`` would have in ``crs`` (GDAL's suggested warp resolution)."""
    if image.crs == crs:
        return image.res
    transform, _, _ = calculate_default_transform(
        image.crs, crs, image.width, image.height, *image.bounds
    )
    return (abs(transform.a), abs(transform.e))


def parse_crs(value: CRS | str) -> CRS:
    """Return the CRS ``value`` names (``EPSG:32633``, WKT, PROJ string, ...).

    GDAL prints its own error line on stderr for an unknown CRS unless an error handler is
    installed: the lookup runs inside a rasterio environment (which installs one), so the user sees
    only our one-line message.

    Raises:
        InputError: ``value`` is not a CRS GDAL knows.

    """
    if isinstance(value, CRS):
        return value
    try:
        with rasterio.Env():
            return CRS.from_user_input(value)
    except (CRSError, ValueError, TypeError) as exc:
        raise InputError(f"{value!r} is not a known CRS (try EPSG:32633 or EPSG:4326)") from exc


def common_grid(
    before: Grid,
    after: Grid,
    crs: CRS | str | None = None,
    resolution: float | None = None,
) -> Grid:
    """Return the grid both images are compared on.

    By default it is the before image's CRS and pixel size over the intersection of both footprints,
    snapped outwards to the before image's pixel lattice (so the before image is read with plain
    windows) and clipped to the before image. With ``crs`` or ``resolution`` (in the target CRS's
    units), or a rotated before image, it is a north-up grid aligned on multiples of the pixel size
    (like ``gdalwarp -tap``).

    Raises:
        InputError: disjoint footprints, or a non-positive resolution.

    """
    target = parse_crs(crs) if crs is not None else before.crs
    if resolution is not None and not resolution > 0:
        raise InputError(f"resolution must be a positive number of CRS units, got {resolution}")
    before_fp = footprint_in(before, target)
    after_fp = footprint_in(after, target)
    overlap = _intersect(before_fp, after_fp)
    if overlap is None and target.is_geographic:
        # Longitudes a turn apart (the antimeridian): compare the footprints in one turn.
        turned = [(after_fp[0] + s, after_fp[1], after_fp[2] + s, after_fp[3]) for s in (-360, 360)]
        overlap = next((o for o in (_intersect(before_fp, t) for t in turned) if o), None)
    if overlap is None:
        raise InputError(
            "the before and after images do not overlap: footprints "
            f"{_fmt(before_fp)} and {_fmt(after_fp)} in {target.to_string()} are disjoint"
        )
    use_before_lattice = target == before.crs and resolution is None and before.is_north_up
    if use_before_lattice:
        xres, yres = before.transform.a, -before.transform.e
        origin_x, origin_y = before.transform.c, before.transform.f
        col0 = max(0, math.floor((overlap[0] - origin_x) / xres + _SNAP_EPS))
        col1 = min(before.width, math.ceil((overlap[2] - origin_x) / xres - _SNAP_EPS))
        row0 = max(0, math.floor((origin_y - overlap[3]) / yres + _SNAP_EPS))
        row1 = min(before.height, math.ceil((origin_y - overlap[1]) / yres - _SNAP_EPS))
        transform = Affine(xres, 0.0, origin_x + col0 * xres, 0.0, -yres, origin_y - row0 * yres)
        width, height = col1 - col0, row1 - row0
    else:
        xres, yres = (
            (resolution, resolution)
            if resolution is not None
            else _native_resolution(before, target)
        )
        left = math.floor(overlap[0] / xres + _SNAP_EPS) * xres
        right = math.ceil(overlap[2] / xres - _SNAP_EPS) * xres
        bottom = math.floor(overlap[1] / yres + _SNAP_EPS) * yres
        top = math.ceil(overlap[3] / yres - _SNAP_EPS) * yres
        transform = Affine(xres, 0.0, left, 0.0, -yres, top)
        width = int(round((right - left) / xres))
        height = int(round((top - bottom) / yres))
    if width <= 0 or height <= 0:
        raise InputError("the before and after images overlap by less than one pixel")
    return Grid(target, transform, width, height)


def _fmt(bounds: Bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def _offsets(length: int, tile_size: int, stride: int) -> list[int]:
    """Tile offsets along one axis: a regular stride, the last one snapped to the scene edge."""
    if length <= tile_size:
        return [0]
    offsets = list(range(0, length - tile_size, stride))
    offsets.append(length - tile_size)
    return offsets


def check_tiling(tile_size: int, overlap: int) -> None:
    """Raise :class:`InputError` unless ``0 <= overlap < tile_size`` and ``tile_size > 0``."""
    if tile_size <= 0:
        raise InputError(f"tile size must be a positive number of pixels, got {tile_size}")
    if overlap < 0 or overlap >= tile_size:
        raise InputError(
            f"overlap must be at least 0 and smaller than the tile size ({tile_size}), "
            f"got {overlap}"
        )


def tile_windows(width: int, height: int, tile_size: int, overlap: int) -> list[Window]:
    """Row-major windows of ``tile_size`` pixels covering a ``width`` x ``height`` scene.

    Windows step by ``tile_size - overlap``; the last row and column are snapped to the scene edge,
    so every window is a full tile (and overlaps its neighbour by at least ``overlap``). A scene
    smaller than a tile along an axis gets a single window of the scene's size there (the tile
    stream pads it).

    Raises:
        InputError: a non-positive tile size, an overlap outside ``[0, tile_size)``, an empty scene.

    """
    check_tiling(tile_size, overlap)
    if width <= 0 or height <= 0:
        raise InputError(f"the common grid is empty ({width} x {height} pixels)")
    stride = tile_size - overlap
    tile_w, tile_h = min(tile_size, width), min(tile_size, height)
    return [
        Window(col, row, tile_w, tile_h)
        for row in _offsets(height, tile_size, stride)
        for col in _offsets(width, tile_size, stride)
    ]


def sample_windows(
    width: int,
    height: int,
    size: int,
    count: int,
    seed: int = 0,
    block: tuple[int, int] = (1, 1),
    origin: tuple[int, int] = (0, 0),
) -> list[Window]:
    """Up to ``count`` seeded pseudo-random windows of ``size`` pixels (clipped to the scene).

    Used for normalization statistics and model calibration without reading the whole scene. A
    position drawn twice gives one window (a scene no larger than a window gives exactly one).
    With ``block`` ``(rows, columns)`` and ``origin`` ``(row, column)``, a grid position where
    blocks of the file meet, a window at most half a block is drawn inside one block: it decodes
    one block instead of up to four.
    """
    rng = np.random.default_rng(seed)
    w, h = min(size, width), min(size, height)
    cols = _offsets_in_blocks(rng, width, w, block[1], origin[1], count)
    rows = _offsets_in_blocks(rng, height, h, block[0], origin[0], count)
    offsets = dict.fromkeys(zip(cols.tolist(), rows.tolist(), strict=True))
    return [Window(c, r, w, h) for c, r in offsets]


def _offsets_in_blocks(
    rng: np.random.Generator, extent: int, size: int, step: int, origin: int, count: int
) -> np.ndarray:
    """``count`` random offsets of a ``size`` window along an axis ``extent`` pixels long.

    When blocks ``step`` pixels long (meeting at ``origin``) are at least twice the window and
    there are several, each window lies inside one block: a random block that fits it, a random
    place in it. Otherwise (strips, blocks not much larger than the window) the offsets are
    uniform over the axis.
    """
    starts = np.arange(origin % step - step, extent, step) if step > 1 else np.empty(0)
    lows = np.maximum(starts, 0)
    highs = np.minimum(starts + step, extent) - size  # last offset keeping the window inside
    fits = highs >= lows
    # Blocks at least twice the window leave it room to move; smaller ones would pin it down.
    if step < 2 * size or step >= extent or not fits.any():
        return rng.integers(0, extent - size + 1, size=count)
    lows, highs = lows[fits], highs[fits]
    chosen = rng.integers(0, lows.size, size=count)
    return lows[chosen] + rng.integers(0, highs[chosen] - lows[chosen] + 1)


@dataclass(frozen=True)
class Panel:
    """A run of whole tile columns, processed top to bottom before the next panel starts.

    Its tiles cover columns ``[col_off, col_off + width)``; it finishes (stitches for good) the
    columns ``[col_off, col_off + own_width)``, up to the next panel's first tile column. The
    columns between are shared with the next panel, which finishes them.
    """

    col_off: int
    width: int
    own_width: int
    windows: tuple[Window, ...]


def panel_layout(windows: list[Window], scene_width: int, panel_width: int) -> list[Panel]:
    """Group row-major tile ``windows`` into panels about ``panel_width`` columns wide.

    Each panel gets whole tile columns (at least one; the last panel may be one tile wider, to
    keep the column snapped to the scene's edge); its windows stay row-major. Processing the
    scene panel by panel keeps every buffer that follows the scene's width (the stitching strip,
    GDAL's block cache) at the panel's width, whatever the scene's.
    """
    columns = sorted({int(w.col_off) for w in windows})
    right = {int(w.col_off): int(w.col_off + w.width) for w in windows}
    step = columns[1] - columns[0] if len(columns) > 1 else 0
    groups: list[list[int]] = []
    for col in columns:
        fits = bool(groups) and right[col] - groups[-1][0] <= panel_width
        # The last column, snapped to the scene's edge, overlaps its neighbour by more than the
        # others do: it stays with it, so that panels only ever share the regular overlap.
        snapped = bool(groups) and col - groups[-1][-1] < step
        if fits or snapped:
            groups[-1].append(col)
        else:
            groups.append([col])
    panel_of = {col: number for number, group in enumerate(groups) for col in group}
    members: list[list[Window]] = [[] for _ in groups]
    for window in windows:  # one pass; row-major order is kept inside each panel
        members[panel_of[int(window.col_off)]].append(window)
    panels = []
    for number, group in enumerate(groups):
        first, end = group[0], right[group[-1]]
        own_end = groups[number + 1][0] if number + 1 < len(groups) else scene_width
        panels.append(Panel(first, end - first, own_end - first, tuple(members[number])))
    return panels


def pass_panels(width: int, height: int, tile_size: int, panel_width: int) -> list[Panel]:
    """Return windows holding every pixel of the scene once, in panels (a pass over the scene).

    Tiles of ``tile_size`` without overlap from the top-left corner (cut at the scene's edges),
    grouped like the run's tiles (:func:`panel_layout`): what :func:`mtrs_geo.tiling.scene_batches`
    reads, and a cluster's workers read part by part.
    """
    check_tiling(tile_size, 0)
    windows = [
        Window(col, row, min(tile_size, width - col), min(tile_size, height - row))
        for row in range(0, height, tile_size)
        for col in range(0, width, tile_size)
    ]
    return panel_layout(windows, width, panel_width)


@dataclass(frozen=True)
class Tiling:
    """How a run cuts its common grid into tiles (pixels); built once, by :func:`scene_tiling`.

    ``panels`` hold the tile windows in the order they are run: panel by panel, row-major within
    a panel. ``pass_panels`` hold the windows of a pass over the whole scene (every pixel once,
    without overlap), in panels like them (:func:`pass_panels`).
    """

    tile_size: int
    overlap: int
    panels: tuple[Panel, ...]
    pass_panels: tuple[Panel, ...]

    @property
    def windows(self) -> list[Window]:
        """Every tile window, in the order run."""
        return [window for panel in self.panels for window in panel.windows]

    @property
    def tiles(self) -> int:
        """How many tile windows there are."""
        return sum(len(panel.windows) for panel in self.panels)


def scene_tiling(grid: Grid, tile_size: int, overlap: int, panel_width: int) -> Tiling:
    """Tile ``grid`` (:func:`tile_windows`) and group the tiles in panels (:func:`panel_layout`).

    Args:
        grid: the common grid.
        tile_size: tile side (pixels).
        overlap: overlap of neighbouring tiles (pixels).
        panel_width: about how wide a panel is (pixels).

    Raises:
        InputError: a non-positive tile size, an overlap outside ``[0, tile_size)``, an empty grid.

    """
    windows = tile_windows(grid.width, grid.height, tile_size, overlap)
    return Tiling(
        tile_size,
        overlap,
        tuple(panel_layout(windows, grid.width, panel_width)),
        tuple(pass_panels(grid.width, grid.height, tile_size, panel_width)),
    )


GIB = 1024**3
# Largest grid side GDAL can address (pixels).
MAX_GRID_SIDE = 2**31 - 1
# Python bookkeeping per tile window (the window, its place in a panel), bytes.
_BYTES_PER_WINDOW = 400
# Share of the machine's memory a run may plan to use.
_MEMORY_SHARE = 0.8


@dataclass(frozen=True)
class RunSize:
    """What a run on a grid will hold: tile count and the main buffers, in bytes."""

    width: int
    height: int
    tiles: int
    batch: int  # tiles per batch, at most the tile count
    batch_bytes: int  # the model's batch arrays and the read buffers of queued tiles
    grid_bytes: int  # the window list and the stitching strips, which follow the grid's size

    @property
    def total_bytes(self) -> int:
        """Everything together."""
        return self.batch_bytes + self.grid_bytes


def _tiles_along(length: int, tile_size: int, stride: int) -> int:
    """Count the tile offsets along one axis (as :func:`tile_windows` makes them)."""
    return 1 if length <= tile_size else -(-(length - tile_size) // stride) + 1


def run_size(
    width: int,
    height: int,
    bands: int,
    input_bytes: int,
    tile_size: int,
    overlap: int,
    batch_size: int,
    prefetch: int,
    panel_width: int,
) -> RunSize:
    """Estimate the memory of a run from its grid and options, without building any window.

    Args:
        width: grid width (pixels).
        height: grid height (pixels).
        bands: bands per image.
        input_bytes: bytes per band value of the images as read (both images together / 2).
        tile_size: tile side (pixels).
        overlap: tile overlap (pixels).
        batch_size: tiles per model batch.
        prefetch: tiles read ahead.
        panel_width: width of the column panels (pixels).

    """
    check_tiling(tile_size, overlap)
    stride = tile_size - overlap
    tiles = _tiles_along(width, tile_size, stride) * _tiles_along(height, tile_size, stride)
    batch = max(1, min(batch_size, tiles))
    tile_px = tile_size * tile_size
    # float32 before and after, the valid mask, the model's float32 output and one temporary.
    per_tile = 2 * bands * 4 + 1 + 4 + 4
    window_px = min(tile_size, width) * min(tile_size, height)
    queued = (prefetch + batch) * 2 * window_px * (bands * input_bytes + 1)
    strip_width = min(width, panel_width + 2 * tile_size)
    # Weighted sums and weights of a strip two tiles high, and of the columns panels share.
    stitch = 2 * 4 * (2 * tile_size * strip_width + height * overlap * 2)
    return RunSize(
        width=width,
        height=height,
        tiles=tiles,
        batch=batch,
        batch_bytes=batch * tile_px * per_tile + queued,
        grid_bytes=tiles * _BYTES_PER_WINDOW + stitch,
    )


def check_run_size(size: RunSize, tile_size: int, memory_bytes: int) -> None:
    """Refuse a run that cannot fit in ``memory_bytes`` (the machine's memory), with the figures.

    Raises:
        InputError: a grid side beyond what GDAL addresses, or more memory than the machine has.

    """
    if max(size.width, size.height) > MAX_GRID_SIDE:
        raise InputError(
            f"the common grid would be {size.width} x {size.height} pixels, more than a raster "
            f"can hold ({MAX_GRID_SIDE} per side): use a coarser resolution"
        )
    if size.total_bytes <= _MEMORY_SHARE * memory_bytes:
        return
    have = f"this machine has {memory_bytes / GIB:.0f} GiB"
    if size.batch_bytes >= size.grid_bytes:
        raise InputError(
            f"a batch of {size.batch} tiles of {tile_size} px needs ~{size.total_bytes / GIB:.0f} "
            f"GiB; {have}: use a smaller batch size or tile size"
        )
    raise InputError(
        f"the common grid of {size.width} x {size.height} pixels in {size.tiles} tiles of "
        f"{tile_size} px needs ~{size.total_bytes / GIB:.0f} GiB; {have}: use a coarser "
        "resolution, larger tiles or a smaller overlap"
    )
