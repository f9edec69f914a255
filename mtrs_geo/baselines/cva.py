"""The ``cva`` model: change vector analysis thresholded with Otsu.

The change magnitude of a pixel is the length of its spectral change vector on the normalized bands,
divided by the square root of the band count (so it stays in [0, 1] for any band count). Otsu's
threshold is computed ONCE, from the scene-wide calibration samples, so every tile is judged by the
same threshold and tiles stitch without seams. The probability is a logistic of the magnitude
centred on that threshold: its 0.5 level is the Otsu threshold. The query is ignored.
"""

from __future__ import annotations

import math

import numpy as np

from mtrs_geo.model_api import ChangeModel, ModelInfo

MODEL_INFO = ModelInfo(
    name="cva",
    description=(
        "Change vector analysis (magnitude of the spectral change vector on normalized bands) "
        "thresholded with Otsu; unsupervised. Ignores the query: finds any change."
    ),
    query_aware=False,
    in_channels=None,
    needs="any band count (the same in both images); CPU only (numpy); no checkpoint",
    trained_on="- (unsupervised)",
    size="0 parameters",
)

# Histogram bins of the Otsu search.
OTSU_BINS = 256
# Logistic slope: the probability goes from 0.12 to 0.88 over +-SOFTNESS * (magnitude spread) around
# the threshold.
SOFTNESS = 0.05


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of a 1-D sample: the cut maximizing the between-class variance."""
    values = np.asarray(values).ravel()
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("Otsu's threshold needs at least one finite value")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = (weight0 * weight1 * (mean0 - mean1) ** 2)[:-1]
    # Cuts in a gap of empty bins split the sample alike: take the middle of the best plateau.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    # The cut after bin i lies on edge i + 1.
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def change_magnitude(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` float32 length of the change vector of ``(B, C, H, W)`` tiles over sqrt(C)."""
    bands = before.shape[1]
    diff = np.subtract(after[:, 0], before[:, 0], dtype=np.float32)
    magnitude = np.square(diff)
    # Band by band into one (B, H, W) buffer: no (B, C, H, W) temporaries.
    for band in range(1, bands):
        np.subtract(after[:, band], before[:, band], out=diff)
        np.square(diff, out=diff)
        magnitude += diff
    np.sqrt(magnitude, out=magnitude)
    magnitude *= np.float32(1.0 / math.sqrt(bands))
    return magnitude


class ChangeVectorAnalysis(ChangeModel):
    """CVA + Otsu; ``threshold`` and ``scale`` are fixed by :meth:`calibrate`. Plain numpy."""

    info = MODEL_INFO

    def __init__(self) -> None:
        self.threshold: float | None = None
        self.scale: float = 0.02

    def calibrate(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> None:
        """Fix Otsu's threshold and the logistic scale from scene-wide samples."""
        magnitude = change_magnitude(before, after)[np.asarray(valid, dtype=bool)]
        if magnitude.size == 0:
            return
        self.threshold = otsu_threshold(magnitude)
        low, high = np.percentile(magnitude, [1.0, 99.0])
        self.scale = max(float(high - low) * SOFTNESS, 1e-4)

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return the change probability ``(B, H, W)`` (uncalibrated: the batch sets the cut)."""
        magnitude = change_magnitude(before, after)
        if self.threshold is None:
            self.calibrate(before, after, np.ones(magnitude.shape, dtype=bool))
        threshold = self.threshold if self.threshold is not None else 0.5
        # The logistic 1 / (1 + exp(-(m - t) / s)), in place on the magnitude (a fresh array): no
        # batch-sized temporaries, and twice as fast as scipy's expit. exp overflows to inf far
        # below the threshold, where the probability is 0 as it should be.
        magnitude -= np.float32(threshold)
        magnitude *= np.float32(-1.0 / self.scale)
        with np.errstate(over="ignore"):
            np.exp(magnitude, out=magnitude)
        magnitude += np.float32(1.0)
        return np.reciprocal(magnitude, out=magnitude)


def build_model() -> ChangeModel:
    """Build a fresh, uncalibrated CVA model."""
    return ChangeVectorAnalysis()
