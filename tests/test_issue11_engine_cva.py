"""Issue 11, wrong answers of ``cva``: sparse change, no change, the same file twice.

The sparse pair: a 1024^2 scene at 0.5 m with smooth textured ground, +-3 sensor noise in both
images, a 3 % gain at the second date, and 10 planted roofs covering about 2 % of the scene.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from scenes import BASE_CRS, ImageSpec, ScenePair, default_extent, make_pair
from shapely.geometry import Polygon, box

from mtrs_geo.baselines.cva import build_model
from mtrs_geo.config import DetectConfig
from mtrs_geo.grid import sample_windows
from mtrs_geo.pipeline import detect

SPARSE_SIZE_PX = 1024
SPARSE_PIXEL_M = 0.5
ROOF_COUNT = 10
ROOF_SIDE_M = 23.0  # 10 roofs of 46 x 46 px: ~2 % of a 1024^2 scene
NOISE = 3  # +- digital numbers (uint8)


def _sampled_pixels(size_px: int) -> np.ndarray:
    """Pixels of the 24 seeded 256 px windows the engine used to calibrate ``cva`` on."""
    sampled = np.zeros((size_px, size_px), dtype=bool)
    for w in sample_windows(size_px, size_px, 256, 24, 0, (256, 256), (0, 0)):
        sampled[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = True
    return sampled


def sparse_roofs(
    extent: tuple[float, float, float, float], size_px: int, seed: int = 11
) -> list[Polygon]:
    """``ROOF_COUNT`` square roofs at seeded places, apart from each other and from the edges.

    They lie outside the sample windows of the old calibration: those windows hold no change,
    the case where a threshold from samples falls inside the noise.
    """
    rng = np.random.default_rng(seed)
    sampled = _sampled_pixels(size_px)
    xmin, ymin, xmax, ymax = extent
    side_px, margin_px = int(ROOF_SIDE_M / SPARSE_PIXEL_M), 12
    roofs: list[Polygon] = []
    for _ in range(100_000):
        if len(roofs) == ROOF_COUNT:
            break
        col, row = (int(v) for v in rng.integers(margin_px, size_px - side_px - margin_px, 2))
        if sampled[row - 4 : row + side_px + 4, col - 4 : col + side_px + 4].any():
            continue
        x, y = xmin + col * SPARSE_PIXEL_M, ymax - (row + side_px) * SPARSE_PIXEL_M
        roof = box(x, y, x + ROOF_SIDE_M, y + ROOF_SIDE_M)
        if all(roof.distance(other) > 10.0 for other in roofs):
            roofs.append(roof)
    assert len(roofs) == ROOF_COUNT
    return roofs


def add_sensor_noise(path: Path, amplitude: int, seed: int) -> None:
    """Add independent uniform integer noise in ``[-amplitude, amplitude]`` to a uint8 image."""
    rng = np.random.default_rng(seed)
    with rasterio.open(path, "r+") as ds:
        data = ds.read().astype(np.int16)
        data += rng.integers(-amplitude, amplitude + 1, size=data.shape, dtype=np.int16)
        ds.write(np.clip(data, 0, 255).astype(np.uint8))


def sparse_pair(
    folder: Path,
    crs: str = BASE_CRS,
    after_crs: str | None = None,
    roofs: bool = True,
    size_px: int = SPARSE_SIZE_PX,
) -> ScenePair:
    """The sparse-change pair of issue 11, both images (or only the after one) in ``crs``."""
    extent = default_extent(size_px * SPARSE_PIXEL_M)
    before = ImageSpec(crs=crs, pixel_size_m=SPARSE_PIXEL_M)
    after = ImageSpec(crs=after_crs or crs, pixel_size_m=SPARSE_PIXEL_M, gain=1.03)
    pair = make_pair(
        folder, before=before, after=after, extent=extent,
        changes=sparse_roofs(extent, size_px) if roofs else [],
    )  # fmt: skip
    add_sensor_noise(pair.before, NOISE, seed=1)
    add_sensor_noise(pair.after, NOISE, seed=2)
    return pair


def iou_with_planted(found: gpd.GeoDataFrame, pair: ScenePair) -> float:
    """Intersection over union of the found polygons and the planted roofs, in the base CRS."""
    got = shapely.union_all(found.to_crs(BASE_CRS).geometry.to_numpy())
    truth = pair.change_union
    return float(got.intersection(truth).area / got.union(truth).area)


def run_cva(pair: ScenePair, out: Path, **options: object) -> gpd.GeoDataFrame:
    """Run ``cva`` on a pair, polygons to ``out``; return them."""
    config = DetectConfig(before=pair.before, after=pair.after, output=out, model="cva")
    detect(dataclasses.replace(config, **options))  # type: ignore[arg-type]
    return gpd.read_file(out)


@pytest.mark.parametrize(
    ("crs", "after_crs"),
    [
        (BASE_CRS, None),
        ("EPSG:3857", None),
        ("EPSG:4326", None),
        (BASE_CRS, "EPSG:4326"),  # the after image warped onto the before image's grid
    ],
)
def test_cva_finds_ten_sparse_roofs_in_a_noisy_textured_scene(
    tmp_path: Path, crs: str, after_crs: str | None
) -> None:
    pair = sparse_pair(tmp_path, crs, after_crs)
    found = run_cva(pair, tmp_path / "roofs.gpkg", min_area=20.0)
    assert len(found) == ROOF_COUNT
    assert iou_with_planted(found, pair) >= 0.95
    # Each roof is found where it is: centroids within 0.5 m on the ground.
    found_base = found.to_crs(BASE_CRS).geometry
    for roof in pair.changes:
        match = found_base.iloc[int(found_base.intersection(roof).area.argmax())]
        assert match.centroid.distance(roof.centroid) <= 0.5


def test_cva_finds_nothing_in_a_noisy_pair_without_change(tmp_path: Path) -> None:
    pair = sparse_pair(tmp_path, roofs=False, size_px=512)
    assert len(run_cva(pair, tmp_path / "none.gpkg")) == 0


def test_the_same_file_as_before_and_after_gives_no_polygon(tmp_path: Path) -> None:
    pair = sparse_pair(tmp_path, roofs=False, size_px=512)
    for image in (pair.before, pair.after):
        mask = tmp_path / f"{image.stem}_mask.tif"
        found = detect(
            DetectConfig(
                before=image,
                after=image,
                output=tmp_path / f"{image.stem}.gpkg",
                mask_out=mask,
                mask_type="binary",
                model="cva",
            )  # fmt: skip
        )
        assert found.polygons == 0
        assert len(gpd.read_file(tmp_path / f"{image.stem}.gpkg")) == 0
        with rasterio.open(mask) as ds:
            assert not (ds.read(1) == 1).any()


def test_cva_does_not_split_a_unimodal_noise_histogram() -> None:
    rng = np.random.default_rng(3)
    before = rng.uniform(0.2, 0.8, (2, 3, 64, 64)).astype(np.float32)
    after = (before + rng.normal(0, 0.02, before.shape)).astype(np.float32)
    model = build_model()
    model.calibrate(before, after, np.ones((2, 64, 64), dtype=bool))
    assert model.threshold == math.inf  # type: ignore[attr-defined]
    assert not model.predict(before, after).any()


def test_the_scene_pass_finds_change_the_samples_missed() -> None:
    """The threshold comes from every tile, not from the samples calibrate() saw."""
    rng = np.random.default_rng(4)
    before = rng.uniform(0.2, 0.8, (8, 3, 64, 64)).astype(np.float32)
    after = (before + rng.normal(0, 0.02, before.shape)).astype(np.float32)
    after[7, :, 10:40, 10:40] = 1.0  # the only change, in the last tile
    valid = np.ones((8, 64, 64), dtype=bool)
    model = build_model()
    assert model.scene_pass
    model.calibrate(before[:4], after[:4], valid[:4])  # samples without change
    assert model.threshold == math.inf  # type: ignore[attr-defined]
    model.calibrate_scene(
        (before[i : i + 2], after[i : i + 2], valid[i : i + 2]) for i in (0, 2, 4, 6)
    )
    found = model.predict(before, after) >= 0.5
    truth = np.zeros_like(found)
    truth[7, 10:40, 10:40] = True
    assert (found & truth).sum() / (found | truth).sum() > 0.95
