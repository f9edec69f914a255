"""Default bands: a 3-band model reads the red, green and blue bands of a multispectral image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from mtrs_geo.bands import default_band_pair, default_bands, rgb_from_metadata
from mtrs_geo.config import DetectConfig
from mtrs_geo.pipeline import describe_pair
from mtrs_geo.sample import sample_pair

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_colour_interpretation_wins_over_descriptions() -> None:
    choice = rgb_from_metadata(["blue", "green", "red", "undefined"], ["red", None, None, None])
    assert choice is not None and choice.bands == (3, 2, 1)
    assert choice.source == "colour interpretation"


def test_descriptions_name_the_visible_bands_not_infrared_or_red_edge() -> None:
    descriptions = ["B2 Blue", "B3 Green", "B4 Red", "B5 Red Edge 1", "B8 near infrared", "NIR"]
    choice = rgb_from_metadata(["gray"] + ["undefined"] * 5, descriptions)
    assert choice is not None and choice.bands == (3, 2, 1) and choice.source == "band description"


def test_no_choice_when_a_colour_is_missing_or_ambiguous() -> None:
    assert rgb_from_metadata(["gray"] * 3, ["a", "b", "c"]) is None
    assert rgb_from_metadata(["gray"] * 4, ["red", "red", "green", "blue"]) is None


def test_the_six_band_sample_gets_its_red_green_blue_for_a_three_band_model() -> None:
    before, after = sample_pair()
    choice = default_bands(before, 3)
    assert choice is not None and choice.bands == (3, 2, 1)
    assert default_bands(before, None) is None  # a model that takes any band count: all bands
    info = describe_pair(DetectConfig(before=before, after=after, model="mtrefseg-r1"))
    assert info.bands_before == info.bands_after == (3, 2, 1)
    chosen = describe_pair(
        DetectConfig(before=before, after=after, model="mtrefseg-r1", bands_before=(4, 3, 2))
    )
    assert chosen.bands_before == chosen.bands_after == (4, 3, 2)  # a choice given is kept


def test_colour_interpretation_of_a_four_band_stack(tmp_path: Path) -> None:
    path = tmp_path / "bgrn.tif"
    profile = {
        "driver": "GTiff", "width": 8, "height": 8, "count": 4, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.zeros((4, 8, 8), dtype="uint16"))
        ds.colorinterp = [
            ColorInterp.blue,
            ColorInterp.green,
            ColorInterp.red,
            ColorInterp.undefined,
        ]
    choice = default_bands(path, 3)
    assert choice is not None and choice.bands == (3, 2, 1)


def test_an_image_without_colour_names_borrows_its_partners_of_the_same_layout() -> None:
    # The ENVI 2000 scene names no colours; the bundled 2003 GeoTIFF, of the same six bands, does.
    envi = SHARED / "landsat-taizhou" / "2000TM"
    if not envi.exists():
        pytest.skip("../shared/data/landsat-taizhou is not here")
    described = sample_pair()[1]
    assert default_bands(envi, 3) is None
    before, after = default_band_pair((envi, described), 3, ("before", "after"))
    assert before is not None and after is not None and before.bands == after.bands == (3, 2, 1)
    assert before.source == "the after image's band description"
    info = describe_pair(DetectConfig(before=envi, after=described, model="mtrefseg-r1"))
    assert info.bands_before == info.bands_after == (3, 2, 1)
