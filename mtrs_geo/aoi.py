"""Area of interest: a run processes only a rectangle and/or the polygons of a vector file.

The common grid is cropped, on its own pixel lattice, to the area's bounds (so tiles are read
window by window as in any run, only fewer of them); with polygons, pixels outside them get no
weight, like nodata, tile by tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from mtrs_geo.errors import InputError
from mtrs_geo.grid import Grid, parse_crs

Bounds = tuple[float, float, float, float]


def check_extent(extent: Bounds, crs: str | None = None) -> None:
    """Refuse an extent that is not ``xmin < xmax``, ``ymin < ymax`` in finite numbers.

    Raises:
        InputError: a bad extent or an unknown CRS.

    """
    if len(extent) != 4 or not all(math.isfinite(v) for v in extent):
        raise InputError(f"extent must be four finite numbers xmin,ymin,xmax,ymax, got {extent}")
    xmin, ymin, xmax, ymax = extent
    if not (xmin < xmax and ymin < ymax):
        raise InputError(f"extent must have xmin < xmax and ymin < ymax, got {extent}")
    if crs is not None:
        parse_crs(crs)


def read_area_polygons(path: Path, crs: Any) -> Any:
    """Return the polygons of a vector file, merged into one geometry in ``crs`` (shapely).

    Raises:
        InputError: unreadable file, no CRS, or no polygon in it.

    """
    import geopandas as gpd
    import shapely

    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio/fiona raise many kinds; all mean "cannot read"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read the area of interest {path}: {reason}") from exc
    if frame.crs is None:
        raise InputError(f"the area of interest {path} has no coordinate reference system")
    polygons = frame[frame.geometry.notna() & frame.geometry.geom_type.isin(_POLYGON_TYPES)]
    if polygons.empty:
        raise InputError(f"the area of interest {path} holds no polygon")
    return shapely.make_valid(shapely.union_all(polygons.to_crs(crs).geometry.to_numpy()))


_POLYGON_TYPES = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class AreaOfInterest:
    """An area in the common grid's CRS: its bounds, and its polygons when it has any."""

    bounds: Bounds
    shape: Any = None  # shapely geometry; None: the whole rectangle

    def crop(self, grid: Grid) -> Grid:
        """Return ``grid`` cut to the area's bounds on the same pixel lattice (whole pixels).

        Raises:
            InputError: the area does not overlap the grid.

        """
        full = Window(0, 0, grid.width, grid.height)
        window = from_bounds(*self.bounds, transform=grid.transform)
        col0, row0 = math.floor(window.col_off + 1e-9), math.floor(window.row_off + 1e-9)
        col1 = math.ceil(window.col_off + window.width - 1e-9)
        row1 = math.ceil(window.row_off + window.height - 1e-9)
        left, top = max(col0, 0), max(row0, 0)
        right, bottom = min(col1, full.width), min(row1, full.height)
        if right <= left or bottom <= top:
            raise InputError("the area of interest does not overlap the images")
        cut = Window(left, top, right - left, bottom - top)
        return Grid(grid.crs, window_transform(cut, grid.transform), right - left, bottom - top)

    def inside(self, grid: Grid, window: Window, valid: np.ndarray) -> np.ndarray:
        """Return ``valid`` (a tile's mask, maybe padded) with the pixels outside turned off."""
        if self.shape is None:
            return valid
        from rasterio.features import geometry_mask

        h, w = int(window.height), int(window.width)
        inside = geometry_mask(
            [self.shape],
            out_shape=(h, w),
            transform=window_transform(window, grid.transform),
            invert=True,
        )
        masked = np.array(valid, dtype=bool, copy=True)
        masked[:h, :w] &= inside
        masked[h:, :] = False
        masked[:, w:] = False
        return masked


def area_of_interest(
    grid: Grid, extent: Bounds | None, extent_crs: str | None, aoi: Path | None
) -> AreaOfInterest | None:
    """Return the area a run is limited to, in ``grid``'s CRS; None for the whole grid.

    Args:
        grid: the pair's common grid.
        extent: ``(xmin, ymin, xmax, ymax)`` in ``extent_crs`` (None: the grid's CRS).
        extent_crs: CRS of the extent.
        aoi: a vector file whose polygons limit the run.

    """
    if extent is None and aoi is None:
        return None
    from rasterio.warp import transform_bounds

    bounds: Bounds = grid.bounds
    if extent is not None:
        crs = parse_crs(extent_crs) if extent_crs else grid.crs
        box = extent
        if crs != grid.crs:
            box = transform_bounds(crs, grid.crs, *extent, densify_pts=21)
        bounds = _intersect(bounds, box)
    shape = None
    if aoi is not None:
        shape = read_area_polygons(Path(aoi), grid.crs)
        if extent is not None:
            import shapely

            shape = shapely.intersection(shape, shapely.box(*bounds))
        if shape.is_empty:
            raise InputError("the area of interest does not overlap the images")
        bounds = _intersect(bounds, tuple(shape.bounds))
    if bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
        raise InputError("the area of interest does not overlap the images")
    return AreaOfInterest(bounds, shape)


def _intersect(a: Bounds, b: Bounds) -> Bounds:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
