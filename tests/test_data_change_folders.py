from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from fixtures_train.builders import make_change_folder
from rasterio.transform import from_origin

from mtrs_geo.errors import InputError
from mtrs_geo.models.data.change_folders import (
    ChangeFolderDataset,
    OSCDCityDataset,
    TorchgeoChangeDataset,
    torchgeo_to_sample,
)


def test_a_b_label_folder_gives_any_change_items_and_skips_unlabelled_pairs(tmp_path: Path) -> None:
    root = make_change_folder(tmp_path / "cd")
    (root / "label" / "c2.png").unlink()
    dataset = ChangeFolderDataset(root)
    assert len(dataset) == 2 and dataset.skipped == ["c2.png"]
    item = dataset[0]
    assert item["text"] == "" and item["sample_id"] == "c0_0"
    assert item["image_a"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert float(item["mask"].sum()) == 36.0  # a 6x6 square, 0/255 label
    assert float(dataset[1]["mask"].sum()) == 0.0  # the all-zero label


def test_folder_without_label_dir_is_an_input_error(tmp_path: Path) -> None:
    root = make_change_folder(tmp_path / "cd")
    (root / "label").rename(root / "labels_elsewhere")
    with pytest.raises(InputError, match="no label folder"):
        ChangeFolderDataset(root)


def _band(path: Path, value: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": value.shape[1],
        "height": value.shape[0],
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:4326",
        "transform": from_origin(2.0, 48.0, 1e-4, 1e-4),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(value.astype(np.uint16), 1)


def test_oscd_city_reads_rgb_bands_and_maps_label_two_to_change(tmp_path: Path) -> None:
    city = tmp_path / "oscd" / "town"
    rng = np.random.default_rng(0)
    for date in ("imgs_1", "imgs_2"):
        for band in ("B02", "B03", "B04", "B08"):
            _band(city / date / f"S2_{band}.tif", rng.integers(100, 3000, (40, 36)))
    cm = np.ones((40, 36), np.uint8)
    cm[5:10, 5:9] = 2
    (city / "cm").mkdir()
    with rasterio.open(
        city / "cm" / "town-cm.tif",
        "w",
        driver="GTiff",
        width=36,
        height=40,
        count=1,
        dtype="uint8",
    ) as dst:
        dst.write(cm, 1)
    item = OSCDCityDataset(tmp_path / "oscd")[0]
    assert item["image_a"].shape == (3, 40, 36) and item["sample_id"] == "town_0"
    assert float(item["mask"].sum()) == 20.0
    assert 0.0 <= float(item["image_b"].min()) and float(item["image_b"].max()) <= 1.0


def test_torchgeo_dataset_is_never_downloaded(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="LEVIRCD"):
        TorchgeoChangeDataset("LEVIRCD", tmp_path / "nothing", "train")
    assert not any((tmp_path / "nothing").glob("*.zip"))
    with pytest.raises(InputError, match="unknown torchgeo"):
        TorchgeoChangeDataset("ImageNet", tmp_path, "train")


def test_torchgeo_items_convert_to_our_item_dict() -> None:
    image = torch.rand(2, 4, 16, 16) * 1000
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[0, :4, :4] = 1
    item = torchgeo_to_sample({"image": image, "mask": mask}, "LEVIRCD_0", normalize=True)
    assert item["image_a"].shape == (3, 16, 16) and float(item["mask"].sum()) == 16.0
