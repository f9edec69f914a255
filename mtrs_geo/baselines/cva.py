"""The ``cva`` model: change vector analysis thresholded with Otsu.

The change magnitude of a pixel is the length of its spectral change vector on the normalized bands,
divided by the square root of the band count (so it stays in [0, 1] for any band count). Otsu's
threshold is computed ONCE, from the histogram of the magnitudes of the whole scene (a few sampled
windows may hold no change at all), so every tile is judged by the same threshold and tiles stitch
without seams. The model is a :class:`~mtrs_geo.model_api.PixelScoreModel`: the engine decodes the
scene once, keeping each pixel's magnitude while it sums the histogram
(:mod:`mtrs_geo.score_pass`); a cluster sums the histograms of its parts
(:meth:`ChangeVectorAnalysis.scene_summary`). A histogram without two modes whose Otsu cut falls
inside the noise (``NOISE_FLOOR``) is not split: then nothing is changed. The probability is a
logistic of the magnitude centred on that threshold: its 0.5 level is the Otsu threshold. The
query is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mtrs_geo.model_api import ChangeModel, ModelInfo, PixelScoreModel

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
# Bins of the scene's magnitude histogram over [0, 1] (magnitudes of normalized bands lie there).
SCENE_BINS = 4096
# Logistic slope: the probability goes from 0.12 to 0.88 over +-SOFTNESS * (magnitude spread) around
# the threshold.
SOFTNESS = 0.05
# A histogram is split only when, smoothed, it dips between its two classes' peaks to at most this
# fraction of the smaller peak: a unimodal no-change histogram (noise only) has no such valley.
VALLEY_RATIO = 0.5
# Width (in bins of the histogram being searched) of the smoothing before looking for the valley.
SMOOTH_BINS = 8
# A histogram without a valley is still split when Otsu's cut lies at or above this magnitude (RMS
# over the bands of 10 % of the stretched range): one mode with a long tail of large changes, as in
# real scenes. Below it the cut would fall inside the sensor noise of a pair without change.
NOISE_FLOOR = 0.1


def otsu_cut(counts: np.ndarray) -> tuple[int, int]:
    """Otsu's cut of a histogram: the range ``[first, last]`` of equally good cut positions.

    A cut at position ``i`` puts bins ``< i`` in the lower class; positions run from 1 to
    ``len(counts) - 1``. Cuts in a gap of empty bins split the sample alike: the caller takes the
    middle of the range.
    """
    counts = np.asarray(counts, dtype=np.float64)
    centres = np.arange(counts.size, dtype=np.float64) + 0.5
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(counts * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = (weight0 * weight1 * (mean0 - mean1) ** 2)[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return int(best[0]) + 1, int(best[-1]) + 1


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
    first, last = otsu_cut(hist)
    return float((edges[first] + edges[last]) / 2)


def is_bimodal(counts: np.ndarray, cut: int, smooth: int = SMOOTH_BINS) -> bool:
    """Tell whether a histogram has a valley at ``cut`` between two modes (see ``VALLEY_RATIO``).

    Both classes must hold a peak, and the smoothed histogram must fall between the two peaks to
    at most ``VALLEY_RATIO`` of the smaller one: a single mode with a tail, split by Otsu inside
    the tail or the mode, has no such dip.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not 0 < cut < counts.size or counts[:cut].sum() == 0 or counts[cut:].sum() == 0:
        return False
    kernel = np.ones(max(1, smooth)) / max(1, smooth)
    smoothed = np.convolve(counts, kernel, mode="same")
    low_peak = int(np.argmax(smoothed[:cut]))
    high_peak = cut + int(np.argmax(smoothed[cut:]))
    valley = float(smoothed[low_peak : high_peak + 1].min())
    return valley <= VALLEY_RATIO * min(smoothed[low_peak], smoothed[high_peak])


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


def magnitude_histogram(
    before: np.ndarray, after: np.ndarray, valid: np.ndarray, bins: int = SCENE_BINS
) -> np.ndarray:
    """Return the counts (int64, ``bins``) of the valid pixels' change magnitudes over [0, 1].

    Magnitude ``m`` counts in bin ``min(floor(m * bins), bins - 1)``; non-finite ones are left out.
    """
    return histogram_in_place(change_magnitude(before, after), valid, bins)


def histogram_in_place(
    magnitude: np.ndarray, valid: np.ndarray, bins: int = SCENE_BINS
) -> np.ndarray:
    """:func:`magnitude_histogram` of magnitudes already computed; ``magnitude`` is overwritten.

    In place, with the left-out pixels in an extra bin (no copies of the valid pixels: a quarter
    less time than selecting them first). The bin indices are made ``intp``, the type
    ``np.bincount`` counts in (no conversion there), and set apart only where a pixel is left out.
    """
    keep = np.isfinite(magnitude)
    keep &= np.asarray(valid, dtype=bool)
    magnitude *= np.float32(bins)
    np.minimum(magnitude, np.float32(bins - 1), out=magnitude)  # magnitudes are >= 0
    with np.errstate(invalid="ignore"):  # non-finite magnitudes: left out just below
        index = magnitude.astype(np.intp)  # truncates, as floor for these
    if not keep.all():
        np.copyto(index, bins, where=~keep)
    return np.bincount(index.ravel(), minlength=bins + 1)[:bins].astype(np.int64)


class ChangeVectorAnalysis(PixelScoreModel):
    """CVA + Otsu; ``threshold`` and ``scale`` are fixed by calibration. Plain numpy.

    A pixel score model: the score is the change magnitude, its summary the magnitude histogram,
    the probability a logistic of it. ``threshold`` is ``math.inf`` when the magnitudes show a
    single mode (no change).
    """

    info = MODEL_INFO

    def __init__(self) -> None:
        self.threshold: float | None = None
        self.scale: float = 0.02

    def calibrate(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> None:
        """Fix Otsu's threshold and the logistic scale from scene-wide samples."""
        self._settle(magnitude_histogram(before, after, valid))

    def scene_summary(
        self, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """Return the magnitude histogram (int64, ``SCENE_BINS``) of the valid pixels of a part.

        Memory is one histogram, whatever the part's size; the counts of parts add up exactly.
        """
        counts = np.zeros(SCENE_BINS, dtype=np.int64)
        for before, after, valid in batches:
            counts += magnitude_histogram(before, after, valid)
        return counts

    def settle_scene(self, summaries: Sequence[np.ndarray]) -> None:
        """Fix the threshold from the histogram of every part of the scene (summed).

        Without a valid pixel the threshold of :meth:`calibrate` stays.
        """
        self._settle(self.merge_summaries(summaries))

    def calibration(self) -> dict[str, Any]:
        """Return the threshold and the logistic scale (see :meth:`restore_calibration`)."""
        return {"threshold": self.threshold, "scale": self.scale}

    def restore_calibration(self, state: dict[str, Any]) -> None:
        """Take the threshold and scale another copy was calibrated to."""
        self.threshold, self.scale = state["threshold"], state["scale"]

    def _settle(self, counts: np.ndarray) -> None:
        """Set ``threshold`` and ``scale`` from a magnitude histogram over [0, 1]."""
        total = int(counts.sum())
        if total == 0:
            return
        bins = counts.size
        filled = np.flatnonzero(counts)
        low, high = int(filled[0]), int(filled[-1]) + 1  # the occupied range, in bins
        cumulative = np.cumsum(counts)
        p01, p99 = np.searchsorted(cumulative, [0.01 * total, 0.99 * total]) / bins
        self.scale = max(float(p99 - p01) * SOFTNESS, 1e-4)
        if high - low < 2:
            self.threshold = math.inf  # one magnitude everywhere (the same image twice): no change
            return
        # Otsu over the occupied range, coarsened to OTSU_BINS-ish bins for the valley test.
        span = counts[low:high]
        first, last = otsu_cut(span)
        cut = (first + last) // 2
        step = max(1, span.size // OTSU_BINS)
        threshold = (low + (first + last) / 2) / bins
        if threshold < NOISE_FLOOR and not is_bimodal(span, cut, smooth=SMOOTH_BINS * step):
            self.threshold = math.inf  # one mode of noise: no change
            return
        self.threshold = threshold

    def scores(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return the change magnitude ``(B, H, W)`` of the tiles (finite, in [0, 1])."""
        return change_magnitude(before, after)

    def score_summary(self, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Return the magnitude histogram of the valid pixels (``scores`` is overwritten)."""
        return histogram_in_place(scores, valid)

    def merge_summaries(self, summaries: Sequence[np.ndarray]) -> np.ndarray:
        """Return the histograms of several parts, summed."""
        counts = np.zeros(SCENE_BINS, dtype=np.int64)
        for summary in summaries:
            counts += summary
        return counts

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Return the change probability of the magnitudes, computed in place in ``scores``."""
        threshold = self.threshold if self.threshold is not None else 0.5
        if math.isinf(threshold):
            scores[...] = 0.0
            return scores
        # The logistic 1 / (1 + exp(-(m - t) / s)), in place on the magnitude: no batch-sized
        # temporaries, and twice as fast as scipy's expit. exp overflows to inf far below the
        # threshold, where the probability is 0 as it should be.
        scores -= np.float32(threshold)
        scores *= np.float32(-1.0 / self.scale)
        with np.errstate(over="ignore"):
            np.exp(scores, out=scores)
        scores += np.float32(1.0)
        return np.reciprocal(scores, out=scores)

    def min_score(self, probability: float) -> float:
        """Return the magnitude of the logistic's ``probability`` level, less 0.01 of its scale.

        ``inf`` when the threshold is (no change: every probability is 0).
        """
        threshold = self.threshold if self.threshold is not None else 0.5
        if math.isinf(threshold):
            return math.inf
        logit = math.log(probability / (1.0 - probability))
        return threshold + self.scale * (logit - 0.01)

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return the change probability ``(B, H, W)`` (uncalibrated: the batch sets the cut)."""
        magnitude = change_magnitude(before, after)
        if self.threshold is None:
            self.calibrate(before, after, np.ones(magnitude.shape, dtype=bool))
        return self.probabilities(magnitude)


def build_model(device: str | None = None) -> ChangeModel:
    """Build a fresh, uncalibrated CVA model (on ``device`` when given: the CPU only)."""
    model = ChangeVectorAnalysis()
    return model if device is None else model.to(device)
