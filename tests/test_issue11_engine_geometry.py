"""Issue 11, items 3 and 4: valid output geometries whatever the options; the antimeridian."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from scipy import ndimage

from mtrs_geo.areas import simplify_metres, valid_polygons
from mtrs_geo.config import DetectConfig
from mtrs_geo.pipeline import detect
from mtrs_geo.vectorize import iter_regions, region_table


def blobs(size: int, seed: int = 0) -> np.ndarray:
    """A noisy changed mask: 60 % of a smoothed random field, full of holes and islands."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 2.0)
    return (field > np.quantile(field, 0.4)).astype(np.float32)


def test_simplified_polygons_in_degrees_stay_valid() -> None:
    # Measured before the fix: one polygon with a hole outside its shell at 3 m.
    table = region_table(
        iter_regions([(0, blobs(512))], 0.5), Affine(1e-5, 0, 10, 0, -1e-5, 45), "EPSG:4326"
    )
    for tolerance in (1.0, 3.0, 5.0, 8.0):
        simplified = simplify_metres(table, tolerance)
        assert shapely.is_valid(simplified.geometry.to_numpy()).all(), tolerance
        assert set(simplified.geom_type) <= {"Polygon", "MultiPolygon"}


def test_repair_keeps_polygons_and_drops_degenerate_parts() -> None:
    bow_tie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    hole_outside = shapely.Polygon(
        [(0, 0), (4, 0), (4, 4), (0, 4)], [[(5, 5), (6, 5), (6, 6), (5, 6)]]
    )
    line_only = shapely.Polygon([(0, 0), (1, 1), (2, 2), (0, 0)])
    good = shapely.box(0, 0, 1, 1)
    fixed = valid_polygons(np.array([bow_tie, hole_outside, line_only, good, None], dtype=object))
    assert shapely.is_valid(fixed[:4]).all()
    assert fixed[0].area == pytest.approx(2.0) and fixed[0].geom_type == "MultiPolygon"
    assert fixed[1].geom_type in ("Polygon", "MultiPolygon") and fixed[1].area > 0
    assert fixed[2].is_empty and fixed[3] is good and fixed[4] is None


def noisy_pair_in_degrees(folder: Path) -> tuple[Path, Path]:
    """A 256^2 pair in EPSG:4326 (~1 m pixels) whose change is a mask full of holes."""
    size = 256
    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8",
        crs="EPSG:4326", transform=Affine(1e-5, 0, 10, 0, -1e-5, 45),
    )  # fmt: skip
    ground = np.random.default_rng(1).integers(60, 120, (3, size, size)).astype(np.uint8)
    after = ground.copy()
    after[:, blobs(size, seed=2).astype(bool)] = 230
    paths = (folder / "before.tif", folder / "after.tif")
    for path, data in zip(paths, (ground, after), strict=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return paths


def written_geometries(folder: Path, suffix: str, simplify: float) -> np.ndarray:
    before, after = noisy_pair_in_degrees(folder)
    out = folder / f"out{suffix}"
    detect(DetectConfig(before=before, after=after, output=out, model="cva", simplify=simplify))
    written = gpd.read_file(out).geometry.to_numpy()
    assert len(written) > 0
    return written


@pytest.mark.parametrize("simplify", [0.0, 3.0, 8.0])
def test_every_geopackage_geometry_is_valid_with_any_simplification(
    tmp_path: Path, simplify: float
) -> None:
    assert shapely.is_valid(written_geometries(tmp_path, ".gpkg", simplify)).all()


def test_every_geojson_geometry_is_valid_after_simplification(tmp_path: Path) -> None:
    assert shapely.is_valid(written_geometries(tmp_path, ".geojson", 3.0)).all()


def test_snapping_to_the_geojson_precision_keeps_polygons_valid() -> None:
    table = region_table(
        iter_regions([(0, blobs(256, seed=2))], 0.5), Affine(1e-5, 0, 10, 0, -1e-5, 45), "EPSG:4326"
    )
    simplified = simplify_metres(table, 3.0).geometry.to_numpy()
    snapped = valid_polygons(simplified, grid_size=1e-7)
    rounded = shapely.transform(snapped, lambda xy: np.round(xy, 7))
    assert shapely.is_valid(rounded).all()
