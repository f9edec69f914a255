"""The probability raster's facts, for every module that writes, reads or converts it.

The stitcher's rows (and the optional temporary GeoTIFF they go to) are float32 probabilities in
[0, 1] on the common grid, :data:`PROBABILITY_NODATA` where either image has no data or outside
the footprint intersection. A binary mask holds uint8 1 (changed), 0 (unchanged) and
:data:`MASK_NODATA`. Every such file is written in square blocks of :data:`PROBABILITY_BLOCK`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no rasterio import for the modules that only need the constants
    from mtrs_geo.grid import Grid

PROBABILITY_NODATA = -1.0
MASK_NODATA = 255
PROBABILITY_BLOCK = 512  # block side of the probability and mask files (GeoTIFF and COG), pixels


def probability_profile(grid: Grid) -> dict[str, object]:
    """Creation options of the temporary probability GeoTIFF on ``grid`` (rasterio profile)."""
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": "float32",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": PROBABILITY_NODATA,
        # A temporary file: ZSTD level 1 costs little CPU (deflate took half the stitching time on
        # noisy probabilities). A GDAL without ZSTD warns and writes it uncompressed.
        "compress": "zstd",
        "zstd_level": 1,
        "BIGTIFF": "IF_SAFER",
    }
    if grid.width >= PROBABILITY_BLOCK or grid.height >= PROBABILITY_BLOCK:
        profile.update(tiled=True, blockxsize=PROBABILITY_BLOCK, blockysize=PROBABILITY_BLOCK)
    return profile
