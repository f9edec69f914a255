from pathlib import Path

import numpy as np
import pytest
from fixtures_train.builders import make_change_folder, make_mtrefseg, square_mask
from PIL import Image

from mtrs_geo.errors import InputError
from mtrs_geo.models.evaluate import (
    evaluate_model,
    evaluate_predictions,
    open_split,
    read_prediction,
    save_prediction,
)


def write_hand_predictions(folder: Path) -> None:
    """Predictions for make_mtrefseg's four samples, with hand-computed scores.

    p0_0: 8x8 square shifted 4 columns from the truth: I = 32, U = 96, IoU 1/3
    p0_1: empty on an empty truth: IoU 1
    p1_0: the 4x4 truth drawn at half resolution (16x16 image): resized back exactly, IoU 1
    p2_0: one pixel on an empty truth: a false positive, I = 0, U = 1, IoU 0
    mIoU = (1/3 + 1 + 1 + 0) / 4 = 58.33; oIoU = 48 / 113 = 42.48; Pr@t = 50 for every t
    """
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(square_mask((32, 32), 4, 8, 8)).save(folder / "p0_0.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "p0_1.png")
    Image.fromarray(square_mask((16, 16), 0, 0, 2)).save(folder / "p1_0.png")
    Image.fromarray(square_mask((32, 32), 31, 31, 1)).save(folder / "p2_0.png")


HAND_ROW = "| val | 58.33 | 42.48 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 4 | 2 | 1 | 0 |"


def test_predictions_folder_scores_the_hand_computed_values(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "ds", "val")
    write_hand_predictions(tmp_path / "preds")
    m = evaluate_predictions(tmp_path / "preds", open_split(tmp_path / "ds", "val"))
    assert m["mIoU"] == pytest.approx(100 * (1 / 3 + 2) / 4)
    assert m["oIoU"] == pytest.approx(100 * 48 / 113)
    assert all(m[f"Pr@{t}"] == 50.0 for t in (50, 60, 70, 80, 90))
    assert (m["empty_gt"], m["empty_pred"], m["both_empty"]) == (2, 1, 1)
    assert (m["false_positives_on_empty_gt"], m["misses"]) == (1, 0)


def test_missing_prediction_names_the_expected_file(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "ds", "val")
    write_hand_predictions(tmp_path / "preds")
    (tmp_path / "preds" / "p1_0.png").unlink()
    with pytest.raises(InputError, match="p1_0.png"):
        evaluate_predictions(tmp_path / "preds", open_split(tmp_path / "ds", "val"))


def test_saved_probabilities_round_trip_the_half_threshold(tmp_path: Path) -> None:
    probability = np.array([[0.4999, 0.5], [0.0, 1.0]], dtype=np.float32)
    save_prediction(probability, tmp_path / "x.png")
    back = read_prediction(tmp_path, "x", (2, 2))
    assert ((back >= 0.5) == (probability >= 0.5)).all()


def test_cva_runs_through_the_change_model_interface_at_native_and_fixed_size(
    tmp_path: Path,
) -> None:
    from mtrs_geo.model_api import load_model

    make_change_folder(tmp_path / "cd", size=(40, 48))
    dataset = open_split(tmp_path, "cd")
    for size in (None, 64):
        m = evaluate_model(load_model("cva"), dataset, input_size=size, save_dir=tmp_path / "p")
        assert m["samples"] == 3 and 0.0 <= m["mIoU"] <= 100.0
    with Image.open(tmp_path / "p" / "c0_0.png") as img:
        assert img.size == (48, 40)  # saved at the ground truth's size
