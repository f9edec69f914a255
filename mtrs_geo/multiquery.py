"""Several queries in one run: query lists, one table of every answer, one band per answer.

The model answers every query of a run in one pass over the tiles (the backbone and the fusion of
the two dates run once per tile, the language-dependent part once per query); the engine stitches
and vectorizes each answer on its own. This module holds what follows from there: the polygons of
every query (and interval of a time series) in one table, a GeoPackage layer per query, and the
mask raster with one band per answer.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mtrs_geo.geopackage import layer_names
from mtrs_geo.probability_raster import MASK_NODATA, PROBABILITY_BLOCK, PROBABILITY_NODATA
from mtrs_geo.write import (
    StagedOutputs,
    _cog_options,
    _fsync,
    _writing,
    check_raster_output,
    check_tiff_complete,
)

if TYPE_CHECKING:
    import geopandas as gpd

# A query list: ``a; b; c`` or one query per line.
_SEPARATORS = re.compile(r"[;\r\n]+")


def split_queries(text: str) -> tuple[str, ...]:
    """Split ``"new buildings; new roads"`` (or one query per line) into queries.

    Blank parts are dropped; a query given twice is kept once; the order is kept. A text without a
    separator is one query (an empty text: the "any change" query ``""``).
    """
    parts = [part.strip() for part in _SEPARATORS.split(text)]
    queries = tuple(dict.fromkeys(part for part in parts if part))
    return queries or ("",)


def repeated_queries(values: Sequence[str]) -> tuple[str, ...]:
    """Return the queries of repeated ``-q`` options, in order, a query given twice once.

    Each value may list several queries (:func:`split_queries`); a value with none (``-q ""``)
    is the "any change" query ``""``, as it is when given alone: ``-q "" -q "new roads"`` asks
    both. No value at all: the "any change" query.
    """
    queries = (query for value in values for query in split_queries(value))
    return tuple(dict.fromkeys(queries)) or ("",)


def query_settings(text: str | Sequence[str]) -> dict[str, Any]:
    """Return the ``query`` and ``queries`` of a :class:`~mtrs_geo.config.DetectConfig`.

    ``text`` is one text (:func:`split_queries`) or the values of repeated ``-q`` options
    (:func:`repeated_queries`). One query fills ``query``, as before; several fill ``queries``.
    """
    queries = split_queries(text) if isinstance(text, str) else repeated_queries(text)
    if len(queries) > 1:
        return {"query": "", "queries": queries}
    return {"query": queries[0], "queries": ()}


def combine_tables(tables: Sequence[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """Return the polygons of several answers in one table, numbered from 1 in order.

    The tables come from :func:`mtrs_geo.write.change_table` (one per query, or per interval and
    query); each keeps its ``query`` and date columns. The CRS is the first table's.
    """
    if len(tables) == 1:
        return tables[0]
    import geopandas as gpd
    import pandas as pd

    combined = gpd.GeoDataFrame(
        pd.concat(list(tables), ignore_index=True), geometry="geometry", crs=tables[0].crs
    )
    combined["id"] = np.arange(1, len(combined) + 1, dtype=np.int64)
    return combined


def add_query_layers(
    table: gpd.GeoDataFrame, path: Path, staged: StagedOutputs, queries: Sequence[str]
) -> list[str]:
    """Add a layer per query asked to a staged GeoPackage (the combined layer stays the first one).

    ``path`` is the destination already written with :func:`mtrs_geo.write.write_vectors` into
    ``staged``; other formats hold one layer and are left alone. Every query of ``queries`` gets
    its layer, an empty one where it found nothing, so the layers of a run do not depend on what
    it found; a single query adds none. Returns the layers added.
    """
    path = Path(path)
    queries = list(dict.fromkeys(queries))
    if path.suffix.lower() != ".gpkg" or len(queries) < 2:
        return []
    import pyogrio

    partial = staged.scratch(path.parent) / "staged" / path.name
    names = layer_names(path.stem, queries)
    # The combined layer's geometry type (as write_vectors picks it), for every layer.
    multi = "MultiPolygon" in set(table.geometry.geom_type.dropna())
    with _writing(path, partial):
        for query, name in zip(queries, names, strict=True):
            pyogrio.write_dataframe(
                table[table["query"] == query],
                partial,
                driver="GPKG",
                layer=name,
                geometry_type="MultiPolygon" if multi else "Polygon",
                promote_to_multi=multi,
            )
        _fsync(partial)
    return names


def write_band_cog(
    probabilities: Sequence[Path],
    descriptions: Sequence[str],
    dst: Path,
    mask_type: Literal["probability", "binary"],
    threshold: float,
    staged: StagedOutputs,
) -> Path:
    """Write one Cloud-Optimized GeoTIFF with a band per answer, described by its query.

    Args:
        probabilities: the stitched probability GeoTIFFs (float32, nodata -1), one per answer,
            all on one grid.
        descriptions: the band descriptions (the query, with its interval in a time series).
        dst: destination ``.tif``; staged in ``staged`` (renamed into place at its commit).
        mask_type: ``probability`` (float32, nodata -1) or ``binary`` (uint8: 1 changed,
            0 unchanged, 255 nodata).
        threshold: probability threshold of the binary mask.
        staged: the run's staged outputs.

    Raises:
        OutputError: the COG could not be written whole; nothing is renamed.

    """
    import rasterio
    import rasterio.shutil

    dst = Path(dst)
    check_raster_output(dst)
    binary = mask_type == "binary"
    dtype = "uint8" if binary else "float32"
    partial = staged.stage(dst)
    stack = partial.parent.parent / f".stack-{uuid.uuid4().hex[:8]}.tif"
    with _writing(dst, partial):
        for path in probabilities:
            check_tiff_complete(Path(path))
        sources = [rasterio.open(path) for path in probabilities]
        try:
            profile = sources[0].profile | {
                "driver": "GTiff",
                "count": len(sources),
                "dtype": dtype,
                "nodata": MASK_NODATA if binary else PROBABILITY_NODATA,
                "tiled": True,
                "blockxsize": PROBABILITY_BLOCK,
                "blockysize": PROBABILITY_BLOCK,
                "compress": "zstd",
                "zstd_level": 1,
                "interleave": "band",
                "BIGTIFF": "IF_SAFER",
            }
            with rasterio.open(stack, "w", **profile) as out:
                for band, (source, text) in enumerate(zip(sources, descriptions, strict=True), 1):
                    out.set_band_description(band, text)
                    for _, window in source.block_windows(1):
                        values = source.read(1, window=window)
                        if binary:
                            nodata = (values == PROBABILITY_NODATA) | ~np.isfinite(values)
                            values = (values >= threshold).astype(np.uint8)
                            values[nodata] = MASK_NODATA
                        out.write(values, band, window=window)
        finally:
            for source in sources:
                source.close()
        try:
            rasterio.shutil.copy(stack, partial, driver="COG", **_cog_options(dtype))
        finally:
            stack.unlink(missing_ok=True)
        check_tiff_complete(partial)
        _fsync(partial)
    return dst
