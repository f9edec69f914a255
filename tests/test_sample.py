from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError, OutputError
from mtrs_geo.pipeline import detect
from mtrs_geo.sample import copy_sample, sample_pair

TAIZHOU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landsat-taizhou"


def test_the_bundled_pair_is_a_georeferenced_landsat_pair_with_its_source() -> None:
    before, after = sample_pair()
    assert (before.parent / "SOURCE.md").is_file()
    for path in (before, after):
        assert path.stat().st_size < 1_000_000
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32651
            assert (ds.width, ds.height, ds.count) == (400, 400, 6)
            assert ds.dtypes[0] == "uint8" and ds.res == (30.0, 30.0)
            assert ds.descriptions[3] == "ETM+ B4 NIR"


@pytest.mark.skipif(not TAIZHOU.exists(), reason="needs ../shared/data/landsat-taizhou")
def test_the_bundled_pixels_are_the_original_envi_pixels() -> None:
    for bundled, original in zip(sample_pair(), ("2000TM", "2003TM"), strict=True):
        with rasterio.open(bundled) as ours, rasterio.open(TAIZHOU / original) as theirs:
            np.testing.assert_array_equal(ours.read(), theirs.read())
            assert ours.transform == theirs.transform


def test_copy_sample_writes_before_after_and_the_source_notice(tmp_path: Path) -> None:
    before, after = copy_sample(tmp_path / "new" / "folder")
    assert (before.name, after.name) == ("before.tif", "after.tif")
    assert before.read_bytes() == sample_pair()[0].read_bytes()
    assert sorted(p.name for p in before.parent.iterdir()) == [
        "SOURCE.md",
        "after.tif",
        "before.tif",
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        copy_sample(blocker)
    with pytest.raises(OutputError, match="cannot create the folder"):
        copy_sample(blocker / "inside")  # a folder below a file cannot be made


@pytest.mark.skipif(not TAIZHOU.exists(), reason="needs ../shared/data/landsat-taizhou")
def test_cva_on_the_sample_agrees_with_the_reference_change_map(tmp_path: Path) -> None:
    before, after = sample_pair()
    mask = tmp_path / "mask.tif"
    detect(
        DetectConfig(
            model="cva",
            before=before,
            after=after,
            mask_out=mask,
            mask_type="binary",
            tile_size=256,
            overlap=32,
        )
    )
    with rasterio.open(mask) as ds:
        found = ds.read(1) == 1
    changed = np.asarray(Image.open(TAIZHOU / "change.bmp")) > 0
    unchanged = np.asarray(Image.open(TAIZHOU / "unchanged.bmp")) > 0
    # Measured: recall 0.91 on the labelled changed pixels, 2.9 % false alarms on the unchanged
    # ones.
    assert found[changed].mean() > 0.85
    assert found[unchanged].mean() < 0.05
