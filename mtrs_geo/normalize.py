"""Radiometric normalization shared by the engine and training: a per-band percentile stretch.

Statistics come from a sample of the scene (overviews or sampled windows), never from a full read;
the same stretch is applied to every tile, so predictions do not depend on how the scene is tiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0


@dataclass(frozen=True)
class BandStats:
    """Per-band stretch limits, in the raster's own units (one value per selected band)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def band_count(self) -> int:
        """Number of bands these statistics describe."""
        return len(self.low)


def band_stats(sample: np.ndarray, valid: np.ndarray | None = None) -> BandStats:
    """Compute stretch limits from a ``(C, H, W)`` or ``(N, C, H, W)`` sample.

    ``valid`` (same shape without the band axis) marks the pixels to use; nodata is left out.
    A band with no valid pixel or no spread gets limits that map it to zero.
    """
    data = np.asarray(sample)
    if data.dtype.kind not in "ui":
        data = data.astype(np.float64, copy=False)
    if data.ndim == 3:
        data = data[None]
    if valid is None:
        mask = np.ones((data.shape[0], *data.shape[2:]), dtype=bool)
    else:
        mask = np.asarray(valid, dtype=bool).reshape(data.shape[0], *data.shape[2:])
    lows: list[float] = []
    highs: list[float] = []
    for band in range(data.shape[1]):
        values = data[:, band][mask]
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        low, high = percentiles(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if high <= low:
            high = low + 1.0
        lows.append(float(low))
        highs.append(float(high))
    return BandStats(tuple(lows), tuple(highs))


def percentiles(values: np.ndarray, q: list[float]) -> np.ndarray:
    """``np.percentile(values, q)`` (linear interpolation) of a 1-D sample, as float64.

    Integer samples go through a histogram: the same order statistics, without sorting (several
    times faster on the millions of pixels the statistics are drawn from).
    """
    if values.dtype.kind in "ui" and values.size:
        counts: np.ndarray | None
        if values.dtype.kind == "u" and values.dtype.itemsize <= 2:  # counted as they are
            low, span = 0, (1 << (8 * values.dtype.itemsize)) - 1
            counts = np.bincount(values, minlength=span + 1)
        else:
            low = int(values.min())
            span = int(values.max()) - low
            counts = (
                np.bincount(values.astype(np.int64) - low, minlength=span + 1)
                if span < 1 << 20
                else None
            )
        if counts is not None:
            cumulative = np.cumsum(counts)
            position = np.asarray(q, dtype=np.float64) / 100.0 * (values.size - 1)
            below = np.floor(position).astype(np.int64)
            above = np.minimum(below + 1, values.size - 1)
            # The k-th smallest value (from 0) is the first whose cumulative count exceeds k.
            value_below = np.searchsorted(cumulative, below, side="right") + low
            value_above = np.searchsorted(cumulative, above, side="right") + low
            return value_below + (position - below) * (value_above - value_below)
    return np.asarray(np.percentile(values.astype(np.float64, copy=False), q), dtype=np.float64)


def percentile_stretch(
    tile: np.ndarray, stats: BandStats, out: np.ndarray | None = None
) -> np.ndarray:
    """Map each band of a ``(..., C, H, W)`` array linearly (low -> 0, high -> 1), clipped.

    Computed in one float32 copy of ``tile`` (the input is never modified), or in ``out`` (a
    float32 array of the same shape, for example a slot of a batch) when given.
    """
    low = np.asarray(stats.low, dtype=np.float32)[:, None, None]
    high = np.asarray(stats.high, dtype=np.float32)[:, None, None]
    source = np.asarray(tile)
    if out is None:
        out = np.array(source, dtype=np.float32, copy=True)
    else:
        np.copyto(out, source, casting="unsafe")
    out -= low
    out /= high - low
    # Integer data over finite limits with a positive spread cannot produce NaN or infinity.
    limits_ok = bool(np.all(np.isfinite(low) & np.isfinite(high) & (high > low)))
    if not (source.dtype.kind in "uib" and limits_ok):
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)
