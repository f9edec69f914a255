"""Panels polygonized apart and joined across their seams afterwards: a scene split among workers.

:class:`~mtrs_geo.vectorize.StreamingVectorizer` polygonizes the panels of a scene one after the
other in one process. A cluster polygonizes each panel on the worker that predicted it
(:class:`PanelVectorizer`, the same strips, the same regions) and joins the regions cut by the
seams on the client (:class:`SeamJoiner`, the same joins in the same order): the table is the one
a single process writes, polygon for polygon, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import numpy as np
from affine import Affine

from mtrs_geo.grid import Panel
from mtrs_geo.probability_raster import PROBABILITY_NODATA
from mtrs_geo.vectorize import (
    Region,
    RegionMerger,
    default_block_rows,
    join_at_seam,
    region_table,
    strip_bounds,
)


def panel_strips(
    panels: Sequence[Panel], height: int, block_height: int, block_rows: int | None = None
) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` of the strips every panel of a layout is polygonized in.

    The strips of :class:`~mtrs_geo.vectorize.StreamingVectorizer`: ``block_rows`` (default about
    2 Mpx of the widest panel) inside whole rows of ``block_height``.
    """
    widest = max(panel.own_width for panel in panels)
    return strip_bounds(height, block_rows or default_block_rows(widest), block_height)


def region_edges(regions: Sequence[Region]) -> tuple[np.ndarray, np.ndarray]:
    """West and east pixel edges of each region."""
    import shapely

    bounds = shapely.bounds(np.asarray([r[0] for r in regions], dtype=object)).reshape(-1, 4)
    return bounds[:, 0], bounds[:, 2]


def _subset(regions: Sequence[Region], keep: np.ndarray) -> list[Region]:
    return [region for region, kept in zip(regions, keep, strict=True) if kept]


class PanelVectorizer:
    """The regions of one panel's own columns, from its rows top to bottom (pixel coordinates).

    Regions under ``min_pixels`` are dropped as soon as they are finished, except those on a seam
    the panel shares with a neighbour (they may still grow there).

    Args:
        panels: every panel of the scene's layout (:func:`mtrs_geo.grid.panel_layout`).
        index: the panel polygonized here.
        strips: :func:`panel_strips` of the layout.
        threshold: probability at or above which a pixel is changed.
        nodata: the probability nodata value.
        min_pixels: see above; 0 keeps every region.

    """

    def __init__(
        self,
        panels: Sequence[Panel],
        index: int,
        strips: list[tuple[int, int]],
        threshold: float,
        nodata: float = PROBABILITY_NODATA,
        min_pixels: int = 0,
    ) -> None:
        self.panel = panels[index]
        self._first, self._last = index == 0, index + 1 == len(panels)
        self._strips = strips
        self.min_pixels = min_pixels
        self._merger = RegionMerger(threshold, nodata, self.panel.col_off)
        tallest = max((stop - start for start, stop in strips), default=0)
        self._buffer = np.empty((tallest, self.panel.own_width), dtype=np.float32)
        self._regions: list[Region] = []
        self._strip = 0
        self._row = 0

    def add_rows(self, row_offset: int, values: np.ndarray) -> None:
        """Take the next rows ``[row_offset, row_offset + len(values))`` of the panel's columns."""
        if row_offset != self._row:
            raise ValueError(f"rows must come in order: expected row {self._row}, got {row_offset}")
        taken = 0
        while taken < len(values):
            start, stop = self._strips[self._strip]
            count = min(stop - self._row, len(values) - taken)
            at = self._row - start
            self._buffer[at : at + count] = values[taken : taken + count]
            taken += count
            self._row += count
            if self._row == stop:
                strip = self._buffer[: stop - start]
                self._regions.extend(self._kept(list(self._merger.add(start, strip))))
                self._strip += 1

    def _kept(self, regions: list[Region]) -> list[Region]:
        if self.min_pixels <= 0 or not regions:
            return regions
        west, east = region_edges(regions)
        on_seam = (west == self.panel.col_off) & (not self._first)
        on_seam |= (east == self.panel.col_off + self.panel.own_width) & (not self._last)
        large = np.fromiter((r[2] >= self.min_pixels for r in regions), bool, len(regions))
        return _subset(regions, large | on_seam)

    def regions(self) -> list[Region]:
        """Return the panel's regions (every row must be in); those still open come last."""
        if self._row != self._strips[-1][1]:
            raise ValueError(f"only {self._row} of {self._strips[-1][1]} rows were added")
        self._buffer = np.empty((0, 0), dtype=np.float32)
        return [*self._regions, *self._merger.finish()]


class SeamJoiner:
    """Joins the regions of a scene's panels, given panel after panel, across their seams.

    Args:
        panels: every panel of the scene's layout.
        min_pixels: regions under this many pixels are left out once no seam can make them grow.

    """

    def __init__(self, panels: Sequence[Panel], min_pixels: int = 0) -> None:
        self.panels = list(panels)
        self.min_pixels = min_pixels
        self._next = 0
        self._pending: list[Region] = []  # ending on the seam right of the last panel added
        self._regions: list[Region] = []

    def add_panel(self, regions: list[Region]) -> None:
        """Take the regions of the next panel (:meth:`PanelVectorizer.regions`)."""
        panel = self.panels[self._next]
        left_seam, right_seam = panel.col_off, panel.col_off + panel.own_width
        if self._pending:
            at_left = region_edges(regions)[0] == left_seam if regions else np.zeros(0, bool)
            joined = join_at_seam(self._pending, _subset(regions, at_left), left_seam)
            regions = joined + _subset(regions, ~at_left)
        self._next += 1
        last = self._next == len(self.panels)
        if last or not regions:
            at_right = np.zeros(len(regions), dtype=bool)
        else:
            at_right = region_edges(regions)[1] == right_seam
        self._pending = _subset(regions, at_right)
        large = np.fromiter((r[2] >= self.min_pixels for r in regions), bool, len(regions))
        self._regions.extend(_subset(regions, ~at_right & large))

    def regions(self) -> list[Region]:
        """Return every region (all panels must be in)."""
        if self._next != len(self.panels):
            raise ValueError(f"only {self._next} of {len(self.panels)} panels were added")
        return self._regions

    def table(self, transform: Affine, crs: object) -> gpd.GeoDataFrame:
        """Return the polygon table of :func:`mtrs_geo.vectorize.region_table`."""
        return region_table(self.regions(), transform, crs)
