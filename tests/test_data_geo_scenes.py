from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from mtrs_geo.errors import InputError
from mtrs_geo.models.data.geo_scenes import GeoScenePairDataset, geo_chip_loader

ORIGIN = (500_000.0, 5_000_640.0)  # upper-left, UTM 33N, 10 m pixels, 64 x 64


def _scene(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(1)
    paths = []
    for name in ("before.tif", "after.tif"):
        path = tmp_path / name
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=64,
            height=64,
            count=3,
            dtype="uint16",
            crs="EPSG:32633",
            transform=from_origin(*ORIGIN, 10.0, 10.0),
        ) as dst:
            dst.write(rng.integers(200, 4000, (3, 64, 64)).astype(np.uint16))
        paths.append(path)
    x0, y1 = ORIGIN
    polygons = gpd.GeoDataFrame(
        {"query": ["new buildings", "new roads"]},
        geometry=[
            box(x0 + 100, y1 - 200, x0 + 200, y1 - 100),
            box(x0 + 400, y1 - 640, x0 + 440, y1),
        ],
        crs="EPSG:32633",
    ).to_crs("EPSG:4326")  # labels in another CRS than the rasters
    labels = tmp_path / "changes.geojson"
    polygons.to_file(labels)
    return paths[0], paths[1], labels


def test_grid_chips_rasterize_the_query_polygons(tmp_path: Path) -> None:
    before, after, labels = _scene(tmp_path)
    scene = GeoScenePairDataset(before, after, labels, query="New Buildings")
    assert scene.queries == ["New Buildings"]
    loader = geo_chip_loader(scene, size=32, batch_size=4, stride=32)
    batch = next(iter(loader))
    assert batch["image_a"].shape == (4, 3, 32, 32)
    assert batch["text"] == ["New Buildings"] * 4
    # The 10 x 10 pixel building lies in the top-left chip only (rows 10-19, cols 10-19).
    sums = sorted(float(m.sum()) for m in batch["mask"])
    assert sums == [0.0, 0.0, 0.0, 100.0]


def test_random_chips_take_each_query_with_its_own_polygons(tmp_path: Path) -> None:
    before, after, labels = _scene(tmp_path)
    scene = GeoScenePairDataset(before, after, labels)
    assert scene.queries == ["new buildings", "new roads"]
    loader = geo_chip_loader(scene, size=32, batch_size=8, length=8, seed=5)
    batch = next(iter(loader))
    for text, mask in zip(batch["text"], batch["mask"], strict=True):
        assert text in scene.queries
        if text == "new roads" and mask.sum() > 0:
            assert float(mask.sum()) % 32 == 0  # the road spans full chip columns


def test_missing_text_attribute_lists_the_attributes(tmp_path: Path) -> None:
    before, after, labels = _scene(tmp_path)
    with pytest.raises(InputError, match="attributes: query"):
        GeoScenePairDataset(before, after, labels, text_field="class")
