from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.drivers
import rasterio.shutil
from rasterio.windows import Window
from scenes import ImageSpec, make_pair

from mtrs_geo.align import AlignedReader
from mtrs_geo.errors import InputError, ModelError
from mtrs_geo.model_api import ModelInfo
from mtrs_geo.read import check_pair, open_raster

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RGB_BYTE = SHARED / "geotiff" / "RGB.byte.tif"
TAIZHOU = SHARED / "landsat-taizhou"


def test_open_raster_describes_the_file_and_selects_bands(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, before=ImageSpec(dtype="uint16", bands=4, nodata=0))
    info = open_raster(pair.before, bands=(4, 2), role="before")
    assert info.bands == (4, 2) and info.band_count == 4
    assert info.dtype == "uint16" and info.nodata == 0
    assert info.grid.crs.to_epsg() == 32633 and info.grid.width == 256
    assert info.name == "before.tif"
    assert open_raster(pair.before).bands == (1, 2, 3, 4)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="before image .*nope.tif does not exist"):
        open_raster(tmp_path / "nope.tif", role="before")


def test_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("not a raster at all\n")
    with pytest.raises(InputError, match="cannot read after image .*notes.tif") as info:
        open_raster(path, role="after")
    assert "\n" not in str(info.value)


def test_missing_crs_is_an_input_error(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, after=ImageSpec(write_crs=False))
    with pytest.raises(InputError, match="no coordinate reference system") as raised:
        open_raster(pair.after, role="after")
    # The option to pair plain images is the command line's: front ends without it (QGIS) show
    # the message alone.
    assert "--" not in str(raised.value)
    assert raised.value.cli_hint is not None and "--pixel-grid" in raised.value.cli_hint


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_raster_without_geotransform_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:4326"
    ) as ds:
        ds.write(np.zeros((1, 8, 8), dtype=np.uint8))
    with pytest.raises(InputError, match="not georeferenced"):
        open_raster(path)


@pytest.mark.parametrize("bands", [(0,), (1, 4), (-1,)])
def test_band_index_out_of_range_is_an_input_error(tmp_path: Path, bands: tuple[int, ...]) -> None:
    pair = make_pair(tmp_path)
    with pytest.raises(
        InputError,
        match=r"band -?\d is out of range for before image before.tif, which has 3 bands",
    ):
        open_raster(pair.before, bands=bands, role="before")


def test_band_count_mismatch_after_selection_is_an_input_error(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, before=ImageSpec(bands=4), after=ImageSpec(bands=3))
    with pytest.raises(
        InputError,
        match="band count mismatch: 4 bands selected in the before image before.tif, 3 in the "
        "after image after.tif",
    ):
        check_pair(open_raster(pair.before, role="before"), open_raster(pair.after, role="after"))
    check_pair(open_raster(pair.before, (1, 2, 3)), open_raster(pair.after))


def test_model_band_count_mismatch_is_a_model_error(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    info = ModelInfo(name="rgbn", description="", query_aware=True, in_channels=4, needs="4 bands")
    before, after = open_raster(pair.before), open_raster(pair.after)
    with pytest.raises(ModelError, match="model 'rgbn' takes 4 bands but 3 are selected"):
        check_pair(before, after, info)
    six = make_pair(tmp_path / "six", before=ImageSpec(bands=6), after=ImageSpec(bands=6))
    rgb = ModelInfo(name="rgb", description="", query_aware=True, in_channels=3, needs="3 bands")
    with pytest.raises(ModelError) as raised:
        check_pair(open_raster(six.before), open_raster(six.after), rgb)
    assert str(raised.value) == (
        "model 'rgb' takes 3 bands but 6 are selected; choose 3 of them (red, green and blue)"
    )


@pytest.mark.skipif(not RGB_BYTE.exists(), reason="needs ../shared/data/geotiff")
def test_real_geotiff_with_a_nodata_collar_opens() -> None:
    info = open_raster(RGB_BYTE)
    assert info.grid.crs.to_epsg() == 32618 and info.nodata == 0 and info.band_count == 3


@pytest.mark.skipif(not TAIZHOU.exists(), reason="needs ../shared/data/landsat-taizhou")
def test_envi_files_open_like_any_raster() -> None:
    info = open_raster(TAIZHOU / "2000TM")
    assert info.grid.crs.to_epsg() == 32651 and info.band_count == 6 and info.dtype == "uint8"


@pytest.mark.parametrize(
    ("driver", "suffix", "options"),
    [("VRT", ".vrt", {}), ("JP2OpenJPEG", ".jp2", {"QUALITY": "100", "REVERSIBLE": "YES"})],
)
def test_other_gdal_formats_read_like_the_geotiff(
    tmp_path: Path, driver: str, suffix: str, options: dict[str, str]
) -> None:
    if driver not in rasterio.drivers.raster_driver_extensions().values():
        pytest.skip(f"GDAL here has no {driver} driver")
    pair = make_pair(tmp_path)
    copy = tmp_path / f"before{suffix}"
    rasterio.shutil.copy(pair.before, copy, driver=driver, **options)
    original, other = open_raster(pair.before), open_raster(copy)
    assert other.grid == original.grid and other.bands == original.bands
    window = Window(10, 20, 100, 50)
    with AlignedReader(original, original.grid) as a, AlignedReader(other, original.grid) as b:
        data_a, valid_a = a.read(window)
        data_b, valid_b = b.read(window)
    np.testing.assert_array_equal(data_a, data_b)
    np.testing.assert_array_equal(valid_a, valid_b)
