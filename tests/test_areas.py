"""Ground areas against pyproj.Geod, and simplification in metres, in UTM, EPSG:4326 and 3857."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS

from mtrs_geo.areas import filter_min_area, ground_areas, min_region_pixels, simplify_metres
from mtrs_geo.grid import Grid

GEOD = Geod(ellps="WGS84")


def geodesic_area(polygon: shapely.Geometry, crs: str) -> float:
    """Reference: densify in the source CRS (straight edges there), then the geodesic area."""
    xmin, ymin, xmax, ymax = polygon.bounds
    dense = shapely.segmentize(polygon, max(xmax - xmin, ymax - ymin) / 400)
    lonlat = gpd.GeoSeries([dense], crs=crs).to_crs(4326).iloc[0]
    area, _ = GEOD.geometry_area_perimeter(lonlat)
    return abs(area)


CASES = [
    ("EPSG:32618", shapely.box(300_000, 4_000_000, 302_000, 4_003_000)),
    ("EPSG:32618", shapely.box(450_000, 4_500_000, 500_000, 4_550_000)),  # 50 km
    ("EPSG:4326", shapely.box(10.0, 60.0, 10.05, 60.02)),
    ("EPSG:4326", shapely.box(-70.5, -33.6, -70.3, -33.4)),
    ("EPSG:3857", shapely.box(-11_858_134, 4_803_914, -11_855_134, 4_806_914)),
    (
        "EPSG:32633",
        shapely.box(500_000, 5_000_000, 501_000, 5_001_000).difference(
            shapely.box(500_200, 5_000_200, 500_400, 5_000_400)
        ),
    ),
]


@pytest.mark.parametrize(("crs", "polygon"), CASES)
def test_ground_area_matches_geodesic_area(crs: str, polygon: shapely.Geometry) -> None:
    area = ground_areas(gpd.GeoDataFrame(geometry=[polygon], crs=crs))[0]
    assert area == pytest.approx(geodesic_area(polygon, crs), rel=1e-6)


def test_web_mercator_area_is_not_the_planar_area() -> None:
    # At ~40 deg N a Web Mercator square metre is about cos(40)^2 = 0.59 ground square metres.
    polygon = shapely.box(-11_858_134, 4_803_914, -11_855_134, 4_806_914)
    area = ground_areas(gpd.GeoDataFrame(geometry=[polygon], crs=3857))[0]
    assert area == pytest.approx(polygon.area * np.cos(np.radians(39.6)) ** 2, rel=0.01)


def test_several_polygons_each_get_their_own_area() -> None:
    polygons = [shapely.box(0.01 * i, 45.0, 0.01 * i + 0.005, 45.005) for i in range(5)]
    frame = gpd.GeoDataFrame(geometry=polygons, crs=4326)
    areas = ground_areas(frame)
    expected = [geodesic_area(p, "EPSG:4326") for p in polygons]
    assert areas == pytest.approx(expected, rel=1e-6)


def test_empty_frame_has_no_areas() -> None:
    assert ground_areas(gpd.GeoDataFrame(geometry=[], crs=32633)).size == 0


def staircase(x0: float, y0: float, step: float, steps: int) -> shapely.Polygon:
    """A pixel-like staircase polygon with ``steps`` steps of ``step`` units."""
    points = [(x0, y0)]
    for i in range(steps):
        points += [(x0 + (i + 1) * step, y0 + i * step), (x0 + (i + 1) * step, y0 + (i + 1) * step)]
    points.append((x0, y0 + steps * step))
    return shapely.Polygon(points)


@pytest.mark.parametrize(
    ("crs", "polygon"),
    [
        ("EPSG:32633", staircase(500_000, 5_000_000, 10.0, 30)),
        ("EPSG:4326", staircase(15.0, 45.0, 0.0001, 30)),
        ("EPSG:3857", staircase(1_669_792, 5_621_521, 14.0, 30)),
    ],
)
def test_simplify_tolerance_is_in_metres(crs: str, polygon: shapely.Polygon) -> None:
    frame = gpd.GeoDataFrame({"mean_score": [0.7]}, geometry=[polygon], crs=crs)

    simplified = simplify_metres(frame, 12.0)

    assert simplified.crs == frame.crs
    assert simplified["mean_score"].tolist() == [0.7]
    out = simplified.geometry.iloc[0]
    assert len(out.exterior.coords) < len(polygon.exterior.coords) / 4
    # The shape moved by at most the tolerance, measured in metres on the ground.
    metric = gpd.GeoSeries([polygon, out], crs=crs).to_crs(
        gpd.GeoSeries([polygon], crs=crs).estimate_utm_crs()
    )
    assert metric.iloc[0].hausdorff_distance(metric.iloc[1]) <= 12.0 * 1.01
    # A tolerance under the step size keeps every corner.
    untouched = simplify_metres(frame, 1.0).geometry.iloc[0]
    assert len(untouched.exterior.coords) == len(polygon.exterior.coords)


def test_zero_tolerance_returns_an_equal_copy() -> None:
    frame = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10)], crs=32633)
    out = simplify_metres(frame, 0.0)
    assert out is not frame
    assert out.geometry.iloc[0].equals(frame.geometry.iloc[0])


def test_min_area_filter_keeps_polygons_at_or_above_the_limit() -> None:
    frame = gpd.GeoDataFrame({"k": [1, 2, 3]}, geometry=[shapely.box(0, 0, 1, 1)] * 3, crs=32633)
    kept, areas = filter_min_area(frame, np.array([50.0, 100.0, 150.0]), 100.0)
    assert kept["k"].tolist() == [2, 3]
    assert areas.tolist() == [100.0, 150.0]


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32633", Affine(10, 0, 500_000, 0, -10, 5_000_000)),
        ("EPSG:3857", Affine(10, 0, 1_600_000, 0, -10, 6_000_000)),  # ~0.65 m on the ground
        ("EPSG:4326", Affine(0.0001, 0, 14.0, 0, -0.0001, 45.0)),
    ],
)
def test_regions_under_the_pixel_bound_can_never_reach_the_minimum_area(
    crs: str, transform: Affine
) -> None:
    grid = Grid(CRS.from_string(crs), transform, 400, 300)
    assert min_region_pixels(grid, 0.0) == 0
    for simplify in (0.0, 5.0):
        needed = min_region_pixels(grid, 5000.0, simplify)
        assert needed > 0
        # The largest region one pixel short of the bound, simplified, stays under the minimum:
        # a row of pixels (the longest outline) at the grid's corner, buffered by the tolerance.
        row = shapely.box(*(transform @ (0, 0)), *(transform @ (needed - 1, 1)))
        frame = gpd.GeoDataFrame(geometry=[row], crs=crs)
        if simplify:
            metric = frame.to_crs(frame.estimate_utm_crs())
            frame = gpd.GeoDataFrame(geometry=metric.buffer(simplify), crs=metric.crs)
        assert ground_areas(frame)[0] < 5000.0
    # A region as large as the bound in pixels may reach it (the bound is not far off).
    pixel = shapely.box(*(transform @ (0, 1)), *(transform @ (1, 0)))
    one = ground_areas(gpd.GeoDataFrame(geometry=[pixel], crs=crs))[0]
    assert min_region_pixels(grid, 5000.0) * one > 0.8 * 5000.0


def test_only_geometries_with_a_long_edge_are_densified() -> None:
    from mtrs_geo.areas import _has_edge_longer_than

    fine = shapely.segmentize(shapely.box(0, 0, 900, 900), 10)  # 900 across, every edge 10 long
    long_hole = fine.difference(shapely.box(100, 100, 800, 120))  # a hole with 700-long edges
    multi = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(0, 10, 600, 11)])
    geometries = np.array([shapely.box(0, 0, 5, 5), long_hole, fine, multi, shapely.Polygon()])
    assert _has_edge_longer_than(geometries, 500.0).tolist() == [False, True, False, True, False]
