from pathlib import Path

import pytest
import torch
from fixtures_train.builders import make_mtrefseg

from mtrs_geo.errors import InputError
from mtrs_geo.models.data.mtrefseg import MTRefSegDataset, list_splits


def test_one_sample_per_pair_and_expression_with_empty_masks(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path, "val")
    dataset = MTRefSegDataset(tmp_path, "val")
    assert [r.sample_id for r in dataset.records] == ["p0_0", "p0_1", "p1_0", "p2_0"]
    first = dataset[0]
    assert first["image_a"].shape == (3, 32, 32) and first["image_a"].dtype == torch.float32
    assert 0.0 <= float(first["image_b"].min()) and float(first["image_b"].max()) <= 1.0
    assert first["text"] == "new buildings"
    assert float(first["mask"].sum()) == 64.0
    assert float(dataset[1]["mask"].sum()) == 0.0  # an empty mask file
    assert dataset[1]["text"] == "demolished roads"
    assert float(dataset[2]["mask"].sum()) == 16.0  # bare names resolved in masks/
    empty = dataset[3]
    assert empty["mask_path"] == "" and float(empty["mask"].sum()) == 0.0


def test_splits_are_found_by_path_and_a_missing_split_names_the_ones_found(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path, "RS/val")
    make_mtrefseg(tmp_path, "train")
    assert list_splits(tmp_path) == ["RS/val", "train"]
    assert len(MTRefSegDataset(tmp_path, "RS/val")) == 4
    with pytest.raises(InputError, match="splits found: RS/val, train"):
        MTRefSegDataset(tmp_path, "test")


def test_mask_count_not_matching_expressions_is_an_input_error(tmp_path: Path) -> None:
    folder = make_mtrefseg(tmp_path, "val")
    bad = folder / "referring_expression" / "p0.json"
    bad.write_text(
        bad.read_text().replace(
            '{"path": "masks/p0_1.png"}', '{"path": "masks/p0_1.png"}, {"path": "masks/p1_0.png"}'
        )
    )
    with pytest.raises(InputError, match="3 masks for 2 referring expressions"):
        MTRefSegDataset(tmp_path, "val")
