"""The shared readers of change-data layouts (mtrs_geo.layouts): one answer for every caller."""

from pathlib import Path

import numpy as np
import pytest
from fixtures_train.builders import make_change_folder
from PIL import Image
from rasterio.transform import from_origin
from shapely.geometry import box

from mtrs_geo.craft.sources import SourceOptions, scene_names
from mtrs_geo.errors import InputError
from mtrs_geo.layouts import (
    find_scene_files,
    folder_pairs,
    oscd_change,
    oscd_cities,
    rasterize_changes,
    read_image,
    read_pixels,
    scene_files,
)
from mtrs_geo.models.evaluate import scene_files as evaluate_scene_files

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_a_label_with_another_suffix_still_pairs_by_stem(tmp_path: Path) -> None:
    root = make_change_folder(tmp_path / "cd", count=2)
    label = root / "label" / "c1.png"
    Image.open(label).save(root / "label" / "c1.bmp")
    label.unlink()
    pairs, skipped = folder_pairs(root)
    assert [p.name for p in pairs] == ["c0.png", "c1.png"] and skipped == []
    assert pairs[1].label.name == "c1.bmp"


def test_a_folder_without_labels_names_the_label_folders(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    with pytest.raises(InputError, match="no label folder"):
        folder_pairs(tmp_path)


def test_a_palette_image_gives_its_indexes_raw_and_its_colours_for_models(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.save(tmp_path / "p.png")
    assert read_pixels(tmp_path / "p.png").tolist() == [[0, 1], [1, 0]]
    assert read_image(tmp_path / "p.png")[:, 0, 1].tolist() == [200.0, 100.0, 50.0]


def test_oscd_maps_as_distributed_and_in_binary_encodings_decode_alike() -> None:
    distributed = np.array([[1, 2], [2, 1]], np.uint8)
    assert oscd_change(distributed).tolist() == [[False, True], [True, False]]
    assert oscd_change(distributed - 1).tolist() == [[False, True], [True, False]]
    assert oscd_change((distributed - 1) * 255).tolist() == [[False, True], [True, False]]


def test_scene_files_agree_for_craft_and_evaluation_whatever_the_case(tmp_path: Path) -> None:
    scene = tmp_path / "s1"
    scene.mkdir()
    for name in ("Before.TIF", "after.vrt", "changes.sqlite"):
        (scene / name).write_bytes(b"")
    expected = (scene / "Before.TIF", scene / "after.vrt", scene / "changes.sqlite")
    assert find_scene_files(scene) == scene_files(scene) == evaluate_scene_files(scene) == expected
    (scene / "more.gpkg").write_bytes(b"")
    assert scene_files(scene) is None
    with pytest.raises(InputError, match="exactly one vector file"):
        find_scene_files(scene)


def test_rasterize_changes_burns_codes_and_skips_empty_geometries() -> None:
    grid = from_origin(0.0, 4.0, 1.0, 1.0)
    burnt = rasterize_changes([box(0, 2, 2, 4), None, box(2, 0, 4, 2)], (4, 4), grid, [3, 9, 5])
    assert burnt.tolist() == [[3, 3, 0, 0], [3, 3, 0, 0], [0, 0, 5, 5], [0, 0, 5, 5]]
    assert not rasterize_changes([], (2, 2), grid).any()


@pytest.mark.skipif(not (SHARED / "oscd").is_dir(), reason="../shared/data/oscd missing")
def test_oscd_cities_are_the_scenes_craft_lists() -> None:
    cities = [city.name for city in oscd_cities(SHARED / "oscd")]
    assert cities == scene_names(SHARED / "oscd", SourceOptions("oscd"))
    assert "bordeaux" in cities
