"""Plain PNG/JPEG pairs without georeferencing, paired pixel by pixel on a pixel grid."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from cli_run import files_in, run_mtrs
from PIL import Image
from pyproj import CRS

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.pipeline import describe_pair
from mtrs_geo.sources import quiet_open

SIZE = 192  # pixels
OFFSET = (500_000.0, 5_000_000.0)  # metres (UTM 33N), a georeferenced copy's corner
LEVIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "levir-cd"


def ground(seed: int = 0) -> np.ndarray:
    """A textured 3-band scene (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    return rng.integers(70, 110, (SIZE, SIZE, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def png_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Before and after PNGs (no georeferencing), a bright 40 x 30 px roof added after."""
    folder = tmp_path_factory.mktemp("png")
    before = ground()
    after = before.copy()
    after[50:80, 20:60] = 240
    paths = (folder / "before.png", folder / "after.png")
    for path, image in zip(paths, (before, after), strict=True):
        Image.fromarray(image).save(path)
    return paths


def georeferenced_copy(png: Path, folder: Path) -> Path:
    """The PNG as a GeoTIFF, 1 m pixels, moved by :data:`OFFSET` from the pixel grid's lattice."""
    with quiet_open(str(png)) as src:
        data = src.read()
    path = folder / f"{png.parent.name}_{png.stem}.tif"  # A/x.png and B/x.png
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs="EPSG:32633",
        transform=rasterio.Affine(1, 0, OFFSET[0], 0, -1, OFFSET[1]),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_real_png_pair_on_a_pixel_grid_equals_its_georeferenced_copy(tmp_path: Path) -> None:
    # A LEVIR-CD pair (real public data, plain PNG without georeferencing).
    name = sorted((LEVIR / "A").glob("*.png"))[0].name
    pngs = (LEVIR / "A" / name, LEVIR / "B" / name)
    tifs = [georeferenced_copy(png, tmp_path) for png in pngs]
    runs = {}
    for kind, pair, extra in (("pixel", pngs, ["--pixel-grid"]), ("geo", tifs, [])):
        folder = tmp_path / kind
        folder.mkdir()
        result = run_mtrs("detect", *pair, "-o", folder / "c.gpkg", "--mask-out",
                          folder / "m.tif", *extra)  # fmt: skip
        assert result.code == 0, result.err
        assert result.err == ""  # no warning about the missing georeferencing
        with rasterio.open(folder / "m.tif") as mask:
            runs[kind] = (gpd.read_file(folder / "c.gpkg"), mask.read(1), mask.transform)

    (pixel, pixel_mask, pixel_transform), (geo, geo_mask, _) = runs["pixel"], runs["geo"]
    assert CRS.from_user_input(pixel.crs).is_engineering
    assert pixel_transform == rasterio.Affine(1, 0, 0, 0, -1, 0)
    np.testing.assert_array_equal(pixel_mask, geo_mask)
    assert len(pixel) == len(geo) > 0
    moved = shapely.transform(pixel.geometry.to_numpy(), lambda xy: xy + np.array(OFFSET))
    assert shapely.equals(moved, geo.geometry.to_numpy()).all()
    # Areas in square pixels: planar areas of the polygons (1 px = 1 unit).
    np.testing.assert_allclose(pixel["area_m2"], pixel.geometry.area)


def test_png_pair_without_the_option_says_how(png_pair: tuple[Path, Path], tmp_path: Path) -> None:
    result = run_mtrs("detect", *png_pair, "-o", tmp_path / "c.gpkg")
    assert result.code == 2
    assert "has no coordinate reference system" in result.err and "pixel grid" in result.err
    assert "gdal_edit" in result.err and len(result.err.strip().splitlines()) == 1
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "c.geojson"], "GeoJSON holds longitude and latitude"),
        (["-o", "c.gpkg", "--crs", "EPSG:3857"], "a target CRS or resolution does not apply"),
    ],
)
def test_what_a_pixel_grid_cannot_do_exits_2(
    png_pair: tuple[Path, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    extra = [str(tmp_path / e) if e.startswith("c.") else e for e in extra]
    result = run_mtrs("detect", *png_pair, "--pixel-grid", *extra)
    assert result.code == 2 and message in result.err
    assert "--" not in result.err.split("Error: ", 1)[-1]  # the library names no CLI flag
    assert files_in(tmp_path) == []


def test_pixel_grid_pairs_must_have_one_size(png_pair: tuple[Path, Path], tmp_path: Path) -> None:
    small = tmp_path / "small.jpg"
    Image.fromarray(ground()[:100, :120]).save(small)
    config = DetectConfig(before=png_pair[0], after=small, pixel_grid=True)
    with pytest.raises(InputError, match=r"192 x 192 px, the after image small.jpg 120 x 100 px"):
        describe_pair(config)


def test_info_on_a_pixel_grid_warns_of_nothing_and_counts_square_pixels(
    png_pair: tuple[Path, Path],
) -> None:
    shown = run_mtrs("info", *png_pair, "--pixel-grid")
    assert shown.code == 0, shown.err
    assert shown.err == ""  # no NotGeoreferencedWarning from the plain images
    assert f"overlap    {SIZE * SIZE:,} px^2" in shown.out
