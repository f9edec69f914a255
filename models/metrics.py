"""The MTRS paper's metrics, exactly: per-sample IoU with its empty-mask rules, mIoU, oIoU, Pr@t.

Per sample (pair, expression) the prediction is binarized at 0.5 (``p >= 0.5``, the engine's rule)
at the ground truth's resolution; ``I = |P and G|``, ``U = |P| + |G| - I``; ``IoU = I / U``, except
both empty gives 1 and exactly one empty gives 0. Over a split: mIoU is the mean IoU (empty
samples included), oIoU (cIoU) is ``sum I / sum U`` (100 when every union is empty), Pr@t the
share of samples with ``IoU >= t``. All are in percent, as the paper prints them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_KEYS = ("mIoU", "oIoU", *(f"Pr@{round(t * 100)}" for t in PRECISION_THRESHOLDS))
COUNT_KEYS = (
    "samples",
    "empty_gt",
    "empty_pred",
    "both_empty",
    "false_positives_on_empty_gt",
    "misses",
)


@dataclass(frozen=True)
class SampleScore:
    """Intersection and union (pixels) of one sample, with its IoU under the paper's rules."""

    intersection: int
    union: int
    gt_pixels: int
    pred_pixels: int

    @property
    def iou(self) -> float:
        """IoU in [0, 1]: both empty -> 1, exactly one empty -> 0, else I / U."""
        if self.gt_pixels == 0 and self.pred_pixels == 0:
            return 1.0
        if self.gt_pixels == 0 or self.pred_pixels == 0:
            return 0.0
        return self.intersection / self.union


def binarize(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binarize a probability map (``p >= threshold``)."""
    return np.asarray(probability) >= threshold


def score_sample(prediction: np.ndarray, ground_truth: np.ndarray) -> SampleScore:
    """Count I and U of two boolean masks of the same shape."""
    pred = np.asarray(prediction, dtype=bool)
    gt = np.asarray(ground_truth, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    intersection = int(np.count_nonzero(pred & gt))
    pred_pixels = int(np.count_nonzero(pred))
    gt_pixels = int(np.count_nonzero(gt))
    return SampleScore(intersection, pred_pixels + gt_pixels - intersection, gt_pixels, pred_pixels)


def split_metrics(scores: Iterable[SampleScore]) -> dict[str, float | int]:
    """Aggregate sample scores into the split's metrics (percent) and counts.

    Raises:
        ValueError: no sample was scored.

    """
    items = list(scores)
    if not items:
        raise ValueError("no sample to score")
    ious = np.array([s.iou for s in items], dtype=np.float64)
    total_i = sum(s.intersection for s in items)
    total_u = sum(s.union for s in items)
    result: dict[str, float | int] = {
        "mIoU": 100.0 * float(ious.mean()),
        "oIoU": 100.0 * (total_i / total_u if total_u else 1.0),
    }
    for t in PRECISION_THRESHOLDS:
        result[f"Pr@{round(t * 100)}"] = 100.0 * float(np.mean(ious >= t))
    result["samples"] = len(items)
    result["empty_gt"] = sum(s.gt_pixels == 0 for s in items)
    result["empty_pred"] = sum(s.pred_pixels == 0 for s in items)
    result["both_empty"] = sum(s.gt_pixels == 0 and s.pred_pixels == 0 for s in items)
    result["false_positives_on_empty_gt"] = sum(
        s.gt_pixels == 0 and s.pred_pixels > 0 for s in items
    )
    result["misses"] = sum(s.gt_pixels > 0 and s.pred_pixels == 0 for s in items)
    return result


def markdown_table(rows: dict[str, dict[str, float | int]], first_column: str = "split") -> str:
    """Render ``{row name: metrics}`` as a markdown table (percent with two decimals)."""
    header = [first_column, *METRIC_KEYS, "samples", "empty GT", "FP on empty GT", "misses"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in rows.items():
        cells = [name, *(f"{float(m[k]):.2f}" for k in METRIC_KEYS)]
        cells += [str(m["samples"]), str(m["empty_gt"])]
        cells += [str(m["false_positives_on_empty_gt"]), str(m["misses"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
