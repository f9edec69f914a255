import numpy as np
import pytest

from mtrs_geo.models.metrics import SampleScore, markdown_table, score_sample, split_metrics


def _mask(cells: list[tuple[int, int]], shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for r, c in cells:
        mask[r, c] = True
    return mask


def test_iou_rules_for_empty_masks() -> None:
    empty = _mask([])
    some = _mask([(0, 0), (0, 1)])
    assert score_sample(empty, empty).iou == 1.0
    assert score_sample(some, empty).iou == 0.0
    assert score_sample(empty, some).iou == 0.0
    # P = 3 pixels, G = 2 pixels, overlap 1: I = 1, U = 4
    partial = score_sample(_mask([(0, 1), (1, 1), (2, 2)]), some)
    assert (partial.intersection, partial.union, partial.iou) == (1, 4, 0.25)


def test_split_metrics_hand_computed() -> None:
    scores = [
        SampleScore(intersection=7, union=10, gt_pixels=8, pred_pixels=9),  # IoU 0.7
        SampleScore(intersection=0, union=0, gt_pixels=0, pred_pixels=0),  # both empty: 1
        SampleScore(intersection=0, union=5, gt_pixels=0, pred_pixels=5),  # FP on empty GT: 0
        SampleScore(intersection=0, union=6, gt_pixels=6, pred_pixels=0),  # miss: 0
        SampleScore(intersection=9, union=10, gt_pixels=10, pred_pixels=9),  # IoU 0.9
    ]
    m = split_metrics(scores)
    assert m["mIoU"] == pytest.approx(100 * (0.7 + 1 + 0 + 0 + 0.9) / 5)  # 52
    assert m["oIoU"] == pytest.approx(100 * 16 / 31)
    assert m["Pr@50"] == pytest.approx(60.0)
    assert m["Pr@70"] == pytest.approx(60.0)  # IoU exactly 0.7 counts at t = 0.7
    assert m["Pr@80"] == pytest.approx(40.0)
    assert m["Pr@90"] == pytest.approx(40.0)
    assert (m["samples"], m["empty_gt"], m["empty_pred"], m["both_empty"]) == (5, 2, 2, 1)
    assert (m["false_positives_on_empty_gt"], m["misses"]) == (1, 1)


def test_all_empty_split_scores_100_when_nothing_is_predicted_and_0_otherwise() -> None:
    nothing = [SampleScore(0, 0, 0, 0)] * 3
    m = split_metrics(nothing)
    assert m["mIoU"] == m["oIoU"] == m["Pr@90"] == 100.0
    noisy = [SampleScore(0, 0, 0, 0), SampleScore(0, 4, 0, 4)]
    m = split_metrics(noisy)
    assert m["mIoU"] == 50.0 and m["oIoU"] == 0.0 and m["false_positives_on_empty_gt"] == 1


def test_empty_split_and_shape_mismatch_are_errors() -> None:
    with pytest.raises(ValueError):
        split_metrics([])
    with pytest.raises(ValueError):
        score_sample(np.zeros((2, 2)), np.zeros((3, 3)))


def test_markdown_table_prints_two_decimals() -> None:
    table = markdown_table({"val": split_metrics([SampleScore(1, 3, 2, 2)])})
    assert "| val | 33.33 | 33.33 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 1 | 0 | 0 | 0 |" in table
