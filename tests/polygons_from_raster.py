"""The reference polygonization of a finished probability raster, read back strip by strip.

The engine never reads its probabilities back: :class:`mtrs_geo.vectorize.StreamingVectorizer`
polygonizes the stitched rows as they come. Tests compare it (and whole runs) with this re-read of
the written raster, which goes through the same strips (:func:`mtrs_geo.vectorize.iter_regions`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.windows import Window

from mtrs_geo.probability_raster import PROBABILITY_NODATA
from mtrs_geo.vectorize import default_block_rows, iter_regions, region_table


def _strips(
    dataset: rasterio.io.DatasetReader, block_rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Read band 1 of ``dataset`` in strips of ``block_rows`` whole rows.

    Reads are whole rows of the file's blocks, so each compressed block is decoded once whatever
    the size of GDAL's block cache; the strips are views into them.
    """
    block_height = max(1, dataset.block_shapes[0][0])
    chunk = -(-block_rows // block_height) * block_height
    for row in range(0, dataset.height, chunk):
        height = min(chunk, dataset.height - row)
        values = dataset.read(1, window=Window(0, row, dataset.width, height))
        for start in range(0, height, block_rows):
            yield row + start, values[start : start + block_rows]


def polygons_from_probability(
    prob_path: Path, threshold: float, block_rows: int | None = None
) -> gpd.GeoDataFrame:
    """Polygonize the changed regions of a single-band probability raster, strip by strip.

    Args:
        prob_path: probability GeoTIFF (float32 in [0, 1], nodata -1).
        threshold: probability at or above which a pixel is changed.
        block_rows: rows read at a time; ``None`` picks about 2 Mpx per strip.

    Returns:
        A GeoDataFrame in the raster's CRS with columns ``mean_score`` (mean probability of the
        region's pixels), ``pixel_count`` and ``geometry`` (one polygon per 4-connected region,
        holes kept), ordered top to bottom by where each region ends.

    """
    with rasterio.open(prob_path) as dataset:
        rows = block_rows or default_block_rows(dataset.width)
        nodata = dataset.nodata if dataset.nodata is not None else PROBABILITY_NODATA
        regions = list(iter_regions(_strips(dataset, rows), threshold, nodata))
        transform, crs = dataset.transform, dataset.crs
    return region_table(regions, transform, crs)
