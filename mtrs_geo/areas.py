"""Ground areas and metric simplification of change polygons (pure functions, no I/O).

Areas are never measured in degrees nor in a conformal projection (Web Mercator inflates them by
``1 / cos(latitude)^2``): polygons are projected into a Lambert azimuthal equal-area projection
centred on the data, which preserves area everywhere, after densifying their edges so that straight
edges of the source CRS keep their shape through the projection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import shapely
from pyproj import CRS, Transformer

from mtrs_geo.errors import InputError
from mtrs_geo.grid import Grid

if TYPE_CHECKING:
    import geopandas as gpd

# geopandas is imported where a function needs it: a run without a minimum area needs none of
# this module's GeoDataFrames before its first tile.

# Edges longer than this are densified before reprojection (source CRS units: metres or degrees).
_DENSIFY_METRES = 500.0
_DENSIFY_DEGREES = 0.005


def data_centre_lonlat(bounds: tuple[float, float, float, float], crs: CRS) -> tuple[float, float]:
    """Return the longitude and latitude (degrees) of the centre of ``bounds`` given in ``crs``."""
    west, south, east, north = bounds
    to_lonlat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    lon, lat = to_lonlat.transform((west + east) / 2.0, (south + north) / 2.0)
    return float(lon), float(lat)


def local_equal_area_crs(lon: float, lat: float) -> CRS:
    """Lambert azimuthal equal-area projection centred on ``(lon, lat)`` (degrees), in metres."""
    return CRS.from_proj4(
        f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    )


def _is_metric(crs: CRS) -> bool:
    """Whether ``crs`` is projected with metre axes."""
    if not crs.is_projected:
        return False
    return all(axis.unit_name in ("metre", "meter", "m") for axis in crs.axis_info[:2])


def _densify(geometry: np.ndarray, crs: CRS) -> np.ndarray:
    """Split long edges so they bend correctly when projected (a no-op for short pixel edges)."""
    step = _DENSIFY_DEGREES if crs.is_geographic else _DENSIFY_METRES / _unit_metres(crs)
    dense = np.array(geometry, dtype=object, copy=True)
    long = _has_edge_longer_than(geometry, step)
    dense[long] = shapely.segmentize(geometry[long], step)
    return dense


def _has_edge_longer_than(geometry: np.ndarray, step: float) -> np.ndarray:
    """Which geometries have an edge longer than ``step`` (one vectorized pass over vertices)."""
    # No edge is longer than its geometry's bounding-box diagonal: most pixel polygons are out.
    west, south, east, north = shapely.bounds(geometry).T
    candidates = np.flatnonzero(np.hypot(east - west, north - south) > step)
    long = np.zeros(len(geometry), dtype=bool)
    if candidates.size == 0:
        return long
    parts, part_of = shapely.get_parts(geometry[candidates], return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    coords, vertex_of = shapely.get_coordinates(rings, return_index=True)
    lengths = np.hypot(*np.diff(coords, axis=0).T)
    same_ring = vertex_of[1:] == vertex_of[:-1]
    over = lengths > step
    long_ring = np.zeros(len(rings), dtype=bool)
    long_ring[vertex_of[1:][same_ring & over]] = True
    long[candidates[part_of[ring_of[long_ring]]]] = True
    return long


def _unit_metres(crs: CRS) -> float:
    """Length in metres of one unit of the first axis of a projected CRS (1 if unknown)."""
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float(factor) if factor else 1.0


def _local_crs_for(gdf: gpd.GeoDataFrame) -> CRS:
    """Return the local equal-area projection centred on the data of ``gdf``."""
    lon, lat = data_centre_lonlat(tuple(gdf.total_bounds), CRS.from_user_input(gdf.crs))
    return local_equal_area_crs(lon, lat)


def _is_local(crs: CRS) -> bool:
    """Whether ``crs`` is an engineering CRS (a pixel grid): planar, not tied to the Earth."""
    return bool(crs.is_engineering)


def grid_outline(grid: Grid, points_per_side: int = 64) -> shapely.Polygon:
    """Return the outline of a grid's pixels in its CRS, each side cut in ``points_per_side``.

    Its four corners go through the grid's transform, so a rotated grid's outline is rotated (its
    bounds are not); the extra points keep the edges' curve when the outline is reprojected.
    """
    steps = np.linspace(0.0, 1.0, points_per_side, endpoint=False)
    width, height = float(grid.width), float(grid.height)
    cols = np.concatenate([steps * width, np.full(steps.size, width), (1 - steps) * width,
                           np.zeros(steps.size)])  # fmt: skip
    rows = np.concatenate([np.zeros(steps.size), steps * height, np.full(steps.size, height),
                           (1 - steps) * height])  # fmt: skip
    xs, ys = grid.transform @ (cols, rows)  # type: ignore[operator]  # affine maps arrays too
    return shapely.Polygon(np.column_stack([xs, ys]))


def footprint_overlap(images: Sequence[Grid], grid: Grid) -> shapely.Geometry:
    """Return the part of ``grid``'s outline every image's footprint covers, in its CRS.

    A common grid is a rectangle of its lattice around the images' overlap; the overlap itself
    can be smaller (rotated images, another CRS). An image whose outline cannot be brought into
    the grid's CRS is left out (the grid's outline already lies inside what every image covers,
    up to the pixels cut on its lattice).
    """
    from rasterio.warp import transform as warp_transform

    shared: shapely.Geometry = grid_outline(grid)
    for image in images:
        outline = grid_outline(image)
        if image.crs != grid.crs:
            try:
                xs, ys = warp_transform(image.crs, grid.crs, *outline.exterior.xy)
            except Exception:  # noqa: BLE001 - a projection that cannot take it: leave it out
                continue
            outline = shapely.make_valid(shapely.Polygon(np.column_stack([xs, ys])))
            if not np.isfinite(shapely.bounds(outline)).all():
                continue
        shared = shapely.intersection(shared, outline)
    return shared


def ground_areas(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Ground area of each geometry in square metres (local equal-area projection, never degrees).

    In an engineering CRS (images paired on a pixel grid) areas are planar, in square CRS units.

    Args:
        gdf: geometries with a CRS.

    Returns:
        A float64 array, one area per row (0 for empty geometries).

    """
    if gdf.crs is None:
        raise ValueError("ground_areas needs geometries with a CRS")
    if len(gdf) == 0:
        return np.zeros(0, dtype=np.float64)
    crs = CRS.from_user_input(gdf.crs)
    if _is_local(crs):
        return np.asarray(gdf.geometry.area, dtype=np.float64)
    import geopandas as gpd

    dense = gpd.GeoSeries(_densify(gdf.geometry.to_numpy(), crs), crs=crs)
    return np.asarray(dense.to_crs(_local_crs_for(gdf)).area, dtype=np.float64)


def simplify_metres(gdf: gpd.GeoDataFrame, tolerance_m: float) -> gpd.GeoDataFrame:
    """Simplify geometries with a tolerance in metres, keeping their topology; returns a copy.

    The work happens in the source CRS when it is projected in metres, otherwise in the local
    equal-area projection, and the result comes back in the source CRS. Geometries that vanish are
    dropped.
    """
    if tolerance_m <= 0 or len(gdf) == 0:
        return gdf.copy()
    if gdf.crs is None:
        raise ValueError("simplify_metres needs geometries with a CRS")
    crs = CRS.from_user_input(gdf.crs)
    result = gdf.copy()
    if _is_metric(crs) or _is_local(crs):  # a pixel grid: the tolerance is in its units
        simplified = gdf.geometry.simplify(tolerance_m, preserve_topology=True)
    else:
        local = _local_crs_for(gdf)
        metric = gdf.geometry.to_crs(local).simplify(tolerance_m, preserve_topology=True)
        simplified = metric.to_crs(crs)
    # Simplification (and the way back from the local projection) can leave holes outside their
    # shell or crossing it: every output geometry must be valid.
    import geopandas as gpd

    result.geometry = gpd.GeoSeries(valid_polygons(simplified.to_numpy()), crs=crs)
    keep = ~(result.geometry.is_empty | result.geometry.isna())
    return result.loc[keep].reset_index(drop=True)


def valid_polygons(geometry: np.ndarray, grid_size: float = 0.0) -> np.ndarray:
    """Return ``geometry`` with each invalid entry repaired into a valid (Multi)Polygon.

    Repairs keep the polygonal parts of :func:`shapely.make_valid` (``structure`` method: holes
    cut out of their shells) and drop degenerate ones (lines, points); an entry with nothing left
    becomes an empty polygon. Valid entries are returned as they are. With ``grid_size`` (CRS
    units) every vertex is first snapped to that grid, keeping the result valid: a writer that
    rounds coordinates (GeoJSON: 7 decimals of a degree, ``grid_size=1e-7``) then writes valid
    geometries.
    """
    geometry = np.asarray(geometry, dtype=object)
    if grid_size > 0:
        geometry = shapely.set_precision(geometry, grid_size)
    result = geometry.copy()
    invalid = np.flatnonzero(~shapely.is_valid(geometry) & ~shapely.is_missing(geometry))
    if invalid.size == 0:
        return result
    repaired = shapely.make_valid(geometry[invalid], method="structure", keep_collapsed=False)
    for index, fixed in zip(invalid, repaired, strict=True):
        result[index] = _polygonal_part(fixed)
    return result


def _polygonal_part(geometry: shapely.Geometry) -> shapely.Geometry:
    """Return the polygons of ``geometry`` as one (Multi)Polygon (an empty Polygon when none)."""
    polygons = [
        part for part in shapely.get_parts(shapely.get_parts(geometry))  # collections too
        if isinstance(part, shapely.Polygon) and not part.is_empty and part.area > 0
    ]  # fmt: skip
    if not polygons:
        return shapely.Polygon()
    if len(polygons) == 1:
        return polygons[0]
    merged = shapely.union_all(polygons)
    return merged if shapely.is_valid(merged) else shapely.make_valid(merged, method="structure")


def filter_min_area(
    gdf: gpd.GeoDataFrame, areas_m2: np.ndarray, min_area_m2: float
) -> tuple[gpd.GeoDataFrame, np.ndarray]:
    """Keep the rows whose ground area is >= ``min_area_m2``; return those rows and their areas."""
    keep = np.asarray(areas_m2) >= min_area_m2
    return gdf.loc[keep].reset_index(drop=True), np.asarray(areas_m2)[keep]


def min_region_pixels(grid: Grid, min_area_m2: float, simplify_m: float = 0.0) -> int:
    """Pixels a region of ``grid`` needs at the least to reach ``min_area_m2`` (0: no bound).

    A conservative bound, for dropping speckle while polygons stream: the longest ground side
    ``s`` of a pixel is taken from the ground areas of 3 x 3 pixels spread over the grid (and their
    aspect ratio), plus 5%. Simplifying with tolerance ``t`` keeps a polygon within ``t`` of its
    outline, so a region of ``n`` pixels ends at most ``n * (s^2 + 4 s t + pi t^2)`` square metres;
    regions smaller than the returned count can never be kept.
    """
    if not math.isfinite(min_area_m2):
        raise InputError(f"minimum area must be a finite number of m^2, got {min_area_m2}")
    if not math.isfinite(simplify_m):
        raise InputError(f"simplify tolerance must be a finite number of m, got {simplify_m}")
    if min_area_m2 <= 0:
        return 0
    t = grid.transform
    cols = (0, grid.width // 2, grid.width - 1)
    rows = (0, grid.height // 2, grid.height - 1)
    pixels = [
        shapely.Polygon([t @ (c, r), t @ (c + 1, r), t @ (c + 1, r + 1), t @ (c, r + 1)])
        for r in rows
        for c in cols
    ]
    import geopandas as gpd

    areas = ground_areas(gpd.GeoDataFrame(geometry=pixels, crs=grid.crs))
    res_x, res_y = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    aspect = max(res_x, res_y) / min(res_x, res_y)
    side = math.sqrt(float(areas.max()) * aspect) * 1.05
    per_pixel = side * side + 4 * side * simplify_m + math.pi * simplify_m * simplify_m
    return int(min_area_m2 // per_pixel)
