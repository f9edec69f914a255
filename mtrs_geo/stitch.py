"""Blend overlapping tile predictions into finished rows of probabilities.

Tiles arrive panel by panel (runs of whole tile columns, :func:`mtrs_geo.grid.panel_layout`), in
row-major order within a panel. The stitcher keeps a rolling strip of weighted sums one tile high
and one panel wide; once no later tile can touch a row, the row is divided by its weight and handed
on: to a callback (the streaming vectorizer) and, when the run writes a mask raster, to the
temporary probability GeoTIFF. The columns a panel shares with the next (the tile overlap) keep
their weighted sums, for every row, until the next panel adds its tiles there: blending across
panels is the same as within one. A full-scene array never exists in memory, and the strip's size
does not grow with the scene's width.

The rows are float32 probabilities in [0, 1] on the common grid, nodata where no valid pixel was
predicted (:mod:`mtrs_geo.probability_raster`: the nodata value, the file's blocks and profile).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from rasterio.io import DatasetWriter
from rasterio.windows import Window

from mtrs_geo.grid import Grid, Tiling
from mtrs_geo.probability_raster import PROBABILITY_NODATA, probability_profile


def blend_weights(tile_size: int, overlap: int) -> np.ndarray:
    """Return a ``(tile_size, tile_size)`` float32 weight window tapered over ``overlap`` pixels.

    The ramp goes from ``1 / (overlap + 1)`` at the tile edge to 1 inside, so weights stay strictly
    positive: pixels at the scene edge, covered by a single tile, still get their prediction.
    """
    ramp = np.ones(tile_size, dtype=np.float64)
    taper = min(overlap, tile_size // 2)
    if taper > 0:
        rise = np.arange(1, taper + 1, dtype=np.float64) / (taper + 1)
        ramp[:taper] = rise
        ramp[tile_size - taper :] = rise[::-1]
    return np.outer(ramp, ramp).astype(np.float32)


class RowSink:
    """Where finished rows of probabilities go: the probability GeoTIFF (if any), then ``on_rows``.

    Args:
        path: the probability GeoTIFF to create; ``None`` writes no file.
        grid: the common grid.
        on_rows: called as ``on_rows(first_row, first_col, rows)`` with each run of rows put;
            ``rows`` is exactly what is written to the file and only valid during the call.

    """

    def __init__(
        self,
        path: Path | None,
        grid: Grid,
        on_rows: Callable[[int, int, np.ndarray], None] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._on_rows = on_rows
        self._dst: DatasetWriter | None = None
        if self.path is not None:
            self._dst = rasterio.open(self.path, "w", **probability_profile(grid))

    def put(self, first_row: int, first_col: int, rows: np.ndarray) -> None:
        """Write ``rows`` (float32, nodata where nothing was predicted) at that grid position."""
        if self._dst is not None:
            height, width = rows.shape
            self._dst.write(rows, 1, window=Window(first_col, first_row, width, height))
        if self._on_rows is not None:
            self._on_rows(first_row, first_col, rows)

    def close(self) -> None:
        """Close the file (also after a failure: the caller removes it then)."""
        if self._dst is not None:
            self._dst.close()
            self._dst = None

    def __enter__(self) -> RowSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StripStitcher:
    """Accumulates weighted tile predictions panel by panel, row-major, and streams rows out.

    Args:
        path: the probability GeoTIFF to create; ``None`` writes no file (``on_rows`` only).
        grid: the common grid.
        tiling: the tiles' size (the strip holds one tile's height), overlap (the blending
            taper) and the panels they come in (:func:`mtrs_geo.grid.scene_tiling`).
        on_rows: called as ``on_rows(first_row, first_col, rows)`` with each run of finished rows
            of a panel's own columns, panel after panel and top to bottom within one; ``rows`` is
            exactly what is written to the file and only valid during the call.
        blend: ``False`` for answers that do not depend on the tile (a pixel score model's):
            a pixel takes a tile's answer as it is, unweighted, which is every covering tile's
            (the rows of :func:`mtrs_geo.score_pass.score_rows`, bit for bit).

    """

    def __init__(
        self,
        path: Path | None,
        grid: Grid,
        tiling: Tiling,
        on_rows: Callable[[int, int, np.ndarray], None] | None = None,
        blend: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.grid = grid
        self.blend = blend
        self.panels = list(tiling.panels)
        self._panel_starts = [panel.col_off for panel in self.panels]
        self.weights = blend_weights(tiling.tile_size, tiling.overlap)
        self._strip_height = min(grid.height, tiling.tile_size)
        widest = max(panel.width for panel in self.panels)
        self._sum_buffer = np.zeros((self._strip_height, widest), dtype=np.float32)
        self._weight_buffer = np.zeros((self._strip_height, widest), dtype=np.float32)
        self._scratch = np.empty(self.weights.shape, dtype=np.float32)  # one tile's weight x prob
        # Weighted sums of the columns a panel shares with the next one, kept for all rows.
        self._carry_sum: np.ndarray | None = None
        self._carry_weight: np.ndarray | None = None
        self._panel = -1
        self._top = 0  # grid row of the strip's first row; rows above it are written
        self._last_row_off = 0
        self._sink = RowSink(path, grid, on_rows)
        self._open = True
        self._begin_panel(0)

    def add(self, window: Window, probability: np.ndarray, valid: np.ndarray) -> None:
        """Add one tile's prediction.

        Args:
            window: the tile's window of the common grid (panel by panel, row-major in each).
            probability: ``(h, w)`` or padded ``(H, W)`` probabilities; cropped to the window.
            valid: boolean mask of the same shape; invalid pixels get no weight.

        """
        row_off, col_off = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        index = self._panel_of(col_off)
        if index < self._panel:
            raise ValueError("tiles must be added panel by panel")
        while self._panel < index:  # panels without a single tile are finished empty
            self._finish_panel()
            self._begin_panel(self._panel + 1)
        if row_off < self._last_row_off:
            raise ValueError("tiles must be added in row-major order within a panel")
        self._last_row_off = row_off
        # Rows above this tile's top are final: every later tile starts at this row or below.
        self._flush_until(row_off)
        if row_off + h > self._top + self._strip_height:
            raise ValueError("tile taller than the stitching strip")
        prob = np.asarray(probability, dtype=np.float32)[:h, :w]
        mask = np.asarray(valid, dtype=bool)[:h, :w]
        r0, c0 = row_off - self._top, col_off - self.panels[self._panel].col_off
        if not self.blend:  # the answer as it is, weight 1 (the rows divide by it)
            np.copyto(self._sum[r0 : r0 + h, c0 : c0 + w], prob, where=mask)
            np.copyto(self._weight[r0 : r0 + h, c0 : c0 + w], np.float32(1.0), where=mask)
            return
        weight = self.weights[:h, :w] if mask.all() else self.weights[:h, :w] * mask
        weighted = np.multiply(weight, prob, out=self._scratch[:h, :w])
        self._sum[r0 : r0 + h, c0 : c0 + w] += weighted
        self._weight[r0 : r0 + h, c0 : c0 + w] += weight

    def _panel_of(self, col_off: int) -> int:
        """Index of the panel whose tile columns start at or before ``col_off`` (the last such)."""
        return max(0, bisect.bisect_right(self._panel_starts, col_off) - 1)

    def _begin_panel(self, index: int) -> None:
        """Start panel ``index``: an empty strip, its first columns seeded from the carry."""
        self._panel = index
        width = self.panels[index].width
        self._sum = self._sum_buffer[:, :width]
        self._weight = self._weight_buffer[:, :width]
        self._sum[...] = 0.0
        self._weight[...] = 0.0
        self._top = 0
        self._last_row_off = 0
        self._seed_rows(0, self._strip_height)
        # Columns shared with the next panel: their sums are finished there, with its tiles.
        shared = width - self.panels[index].own_width
        self._out_sum: np.ndarray | None = None
        self._out_weight: np.ndarray | None = None
        if shared > 0:
            self._out_sum = np.zeros((self.grid.height, shared), np.float32)
            self._out_weight = np.zeros((self.grid.height, shared), np.float32)

    def _seed_rows(self, first: int, stop: int) -> None:
        """Copy the carried sums of strip rows ``[first, stop)`` into the panel's first columns."""
        if self._carry_sum is None:
            return
        band = self._carry_sum.shape[1]
        rows = slice(self._top + first, min(self._top + stop, self.grid.height))
        count = rows.stop - rows.start
        if count > 0:
            self._sum[first : first + count, :band] = self._carry_sum[rows]
            self._weight[first : first + count, :band] = self._carry_weight[rows]  # type: ignore[index]

    def _finish_panel(self) -> None:
        """Write the panel's remaining rows; the carry now holds what it shares with the next."""
        self._flush_until(self.grid.height)
        self._carry_sum, self._carry_weight = self._out_sum, self._out_weight

    def _flush_until(self, row: int) -> None:
        """Write rows ``[top, row)``.

        Rows need not end on a block edge: GDAL keeps a partly written block in its cache (sized by
        the pipeline for a row of output blocks) until the next strip completes it.
        """
        row = min(row, self.grid.height)
        while self._top < row:
            self._write_rows(min(row - self._top, self._strip_height))

    def _write_rows(self, count: int) -> None:
        """Write the strip's first ``count`` rows and roll the strip up by as many rows."""
        panel = self.panels[self._panel]
        own = panel.own_width
        if self._out_sum is not None and self._out_weight is not None:
            self._out_sum[self._top : self._top + count] = self._sum[:count, own:]
            self._out_weight[self._top : self._top + count] = self._weight[:count, own:]
        # Computed in place in the strip (those rows are cleared next): no scene-wide temporaries.
        rows = self._sum[:count, :own]
        weight = self._weight[:count, :own]
        covered = weight > 0
        np.divide(rows, weight, out=rows, where=covered)
        np.clip(rows, 0.0, 1.0, out=rows)
        np.logical_not(covered, out=covered)
        np.copyto(rows, np.float32(PROBABILITY_NODATA), where=covered)
        self._sink.put(self._top, panel.col_off, rows)
        keep = self._strip_height - count
        if keep > 0:
            # numpy copies overlapping slices correctly.
            self._sum[:keep] = self._sum[count:]
            self._weight[:keep] = self._weight[count:]
        self._sum[keep:] = 0.0
        self._weight[keep:] = 0.0
        self._top += count
        self._seed_rows(keep, self._strip_height)

    def close(self) -> None:
        """Write the remaining rows (never-covered rows become nodata) and close the file."""
        if not self._open:
            return
        while True:
            self._finish_panel()
            if self._panel + 1 == len(self.panels):
                break
            self._begin_panel(self._panel + 1)
        self._open = False
        self._sink.close()

    def abort(self) -> None:
        """Close without finishing (the caller removes the file)."""
        self._open = False
        self._sink.close()

    def __enter__(self) -> StripStitcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
