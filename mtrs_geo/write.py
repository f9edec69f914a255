"""Every output file of a run: atomic writes, vector files by extension, and the mask COG.

Outputs are written under a temporary name in the destination folder (same extension, so GDAL
picks the same driver) and renamed only once complete: a failed or interrupted run never leaves a
file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import rasterio.shutil

from mtrs_geo.areas import filter_min_area, ground_areas, simplify_metres
from mtrs_geo.errors import InputError

# extension -> (OGR driver, whether the file is written in EPSG:4326 per RFC 7946)
VECTOR_FORMATS: dict[str, tuple[str, bool]] = {
    ".geojson": ("GeoJSON", True),
    ".json": ("GeoJSON", True),
    ".gpkg": ("GPKG", False),
    ".fgb": ("FlatGeobuf", False),
    ".shp": ("ESRI Shapefile", False),
}
RASTER_EXTENSIONS = (".tif", ".tiff")
# Files that make up one shapefile besides the .shp itself.
_SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml")
ATTRIBUTE_COLUMNS = ("id", "query", "model", "area_m2", "mean_score", "before", "after")
MASK_NODATA = 255
PROBABILITY_NODATA = -1.0


def _partial_path(path: Path) -> Path:
    """Return a hidden temporary name beside ``path``, same extension (``.name.partial-x.ext``)."""
    suffix = ".shp.xml" if path.name.endswith(".shp.xml") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.partial-{uuid.uuid4().hex[:8]}{suffix}")


def _family(path: Path) -> list[Path]:
    """List the files GDAL may write for ``path``: itself and, for a shapefile, its sidecars."""
    if path.suffix.lower() != ".shp":
        return [path]
    stem = path.with_suffix("")
    return [path] + [stem.with_name(stem.name + ext) for ext in _SHAPEFILE_SIDECARS]


def _remove_quietly(paths: list[Path]) -> None:
    for item in paths:
        with contextlib.suppress(FileNotFoundError):
            item.unlink()


def remove_output(path: Path) -> None:
    """Delete a finished output file, with its shapefile sidecars; a missing file is fine."""
    _remove_quietly(_family(Path(path)))


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block completes.

    On any exception (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary file and
    its shapefile sidecars are removed and the exception propagates; an existing ``path`` is left
    as it was.
    For a shapefile the sidecars are renamed first and the ``.shp`` last.

    Raises:
        InputError: the destination folder does not exist.

    """
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"output folder does not exist: {target.parent}")
    partial = _partial_path(target)
    written = _family(partial)
    try:
        yield partial
        if not partial.exists():
            raise RuntimeError(f"nothing was written to {partial.name}")
    except BaseException:
        _remove_quietly(written)
        raise
    destinations = _family(target)
    # A shapefile being replaced must not keep sidecars of its previous version.
    _remove_quietly([d for d, w in zip(destinations, written, strict=True) if not w.exists()])
    for source, destination in reversed(list(zip(written, destinations, strict=True))):
        if source.exists():
            os.replace(source, destination)


@contextlib.contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it replaces ``path`` when the block completes.

    On any exception the staging folder is removed and an existing ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def vector_format(path: Path) -> tuple[str, bool]:
    """Return ``(OGR driver, written in EPSG:4326)`` for an output path, from its extension.

    Raises:
        InputError: the extension is not one of the supported vector formats.

    """
    suffix = path.suffix.lower()
    if suffix not in VECTOR_FORMATS:
        known = ", ".join(VECTOR_FORMATS)
        shown = suffix or "(none)"
        raise InputError(f"unknown vector output extension {shown!r}: use one of {known}")
    return VECTOR_FORMATS[suffix]


def check_raster_output(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is a GeoTIFF name (``.tif``/``.tiff``)."""
    if path.suffix.lower() not in RASTER_EXTENSIONS:
        raise InputError(f"--mask-out must end with .tif or .tiff, got {path.name!r}")


def write_vectors(gdf: gpd.GeoDataFrame, path: Path) -> Path:
    """Write polygons atomically, the format chosen by extension; return ``path``.

    ``.geojson``/``.json`` are RFC 7946 (EPSG:4326, longitude/latitude order); ``.gpkg``,
    ``.fgb`` and ``.shp`` keep the GeoDataFrame's CRS.

    Raises:
        InputError: unknown extension or missing destination folder.

    """
    path = Path(path)
    driver, lonlat = vector_format(path)
    frame = gdf.to_crs(4326) if lonlat and gdf.crs is not None else gdf
    kinds = set(frame.geometry.geom_type.dropna())
    geometry_type = "MultiPolygon" if "MultiPolygon" in kinds else "Polygon"
    options: dict[str, str] = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
    if driver == "ESRI Shapefile":
        options["ENCODING"] = "UTF-8"
    with atomic_output(path) as partial:
        pyogrio.write_dataframe(
            frame,
            partial,
            driver=driver,
            layer=path.stem,
            geometry_type=geometry_type,
            promote_to_multi=geometry_type == "MultiPolygon",
            layer_options=options,
        )
    return path


def change_table(
    polygons: gpd.GeoDataFrame,
    *,
    query: str,
    model: str,
    before: str,
    after: str,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    extra: dict[str, str] | None = None,
) -> gpd.GeoDataFrame:
    """Build the output attribute table from vectorized polygons (``mean_score`` + geometry).

    Simplifies (tolerance in metres), measures ground areas, drops polygons under ``min_area_m2``,
    and numbers the rest from 1. Columns: ``id, query, model, area_m2, mean_score, before, after``,
    then ``extra`` (constant string columns), then ``geometry``; the CRS is the polygons' CRS.
    """
    simplified = simplify_metres(polygons, simplify_m)
    kept, areas = filter_min_area(simplified, ground_areas(simplified), min_area_m2)
    count = len(kept)
    columns: dict[str, object] = {
        "id": np.arange(1, count + 1, dtype=np.int64),
        "query": [query] * count,
        "model": [model] * count,
        "area_m2": areas.astype(np.float64),
        "mean_score": kept["mean_score"].to_numpy(dtype=np.float64),
        "before": [before] * count,
        "after": [after] * count,
    }
    for name, value in (extra or {}).items():
        columns[name] = [value] * count
    return gpd.GeoDataFrame(columns, geometry=kept.geometry.to_numpy(), crs=polygons.crs)


def _cog_options(dtype: str) -> dict[str, str]:
    """Creation options of the COG driver for a mask or probability raster."""
    return {
        "COMPRESS": "DEFLATE",
        "PREDICTOR": "YES" if dtype == "float32" else "NO",
        "BLOCKSIZE": "512",
        "OVERVIEWS": "AUTO",
        "OVERVIEW_RESAMPLING": "NEAREST" if dtype == "uint8" else "AVERAGE",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def _binary_mask_tiff(prob_path: Path, dst: Path, threshold: float) -> None:
    """Write a tiled uint8 GeoTIFF of the thresholded probability (1 change, 0 none, 255 nodata)."""
    with rasterio.open(prob_path) as src:
        nodata = src.nodata if src.nodata is not None else PROBABILITY_NODATA
        profile = src.profile | {
            "driver": "GTiff",
            "dtype": "uint8",
            "nodata": MASK_NODATA,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        with rasterio.open(dst, "w", **profile) as out:
            for _, window in src.block_windows(1):
                values = src.read(1, window=window)
                mask = np.where(values >= threshold, 1, 0).astype(np.uint8)
                mask[(values == nodata) | ~np.isfinite(values)] = MASK_NODATA
                out.write(mask, 1, window=window)


def write_probability_cog(
    prob_path: Path,
    dst: Path,
    mask_type: Literal["probability", "binary"] = "probability",
    threshold: float = 0.5,
) -> Path:
    """Convert the run's probability raster into a Cloud-Optimized GeoTIFF at ``dst`` (atomically).

    Args:
        prob_path: the stitched probability GeoTIFF (float32 in [0, 1], nodata -1).
        dst: destination ``.tif``.
        mask_type: ``"probability"`` keeps float32 probabilities (nodata -1); ``"binary"`` writes
            uint8: 1 = changed (probability >= threshold), 0 = unchanged, 255 = nodata.
        threshold: probability threshold of the binary mask.

    Returns:
        ``dst``.

    """
    dst = Path(dst)
    check_raster_output(dst)
    if mask_type not in ("probability", "binary"):
        raise InputError(f"unknown mask type {mask_type!r}: use probability or binary")
    with atomic_output(dst) as partial:
        if mask_type == "probability":
            rasterio.shutil.copy(prob_path, partial, driver="COG", **_cog_options("float32"))
        else:
            with tempfile.TemporaryDirectory(dir=Path(prob_path).parent) as scratch:
                binary = Path(scratch) / "binary.tif"
                _binary_mask_tiff(prob_path, binary, threshold)
                rasterio.shutil.copy(binary, partial, driver="COG", **_cog_options("uint8"))
    return dst
