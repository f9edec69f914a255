"""Open and validate the input rasters; band selection; nodata and masks.

Everything GDAL opens is accepted (GeoTIFF/COG, VRT, JP2, ENVI, ...), in any numeric dtype, with
nodata values, per-band or per-dataset masks, from a local file, a URL, a STAC item or a list of
single-band files (:mod:`mtrs_geo.sources`). Images without georeferencing are read on a pixel grid
when asked to. The images' sampled statistics are :mod:`mtrs_geo.scene_samples`'.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from mtrs_geo.errors import InputError, ModelError
from mtrs_geo.grid import Grid, unwrap_longitudes
from mtrs_geo.model_api import ModelInfo
from mtrs_geo.sources import PIXEL_GRID_CRS, Source, resolve_source

# Latitude beyond a pole tolerated in a geographic image's bounds (degrees): float round-off.
_POLE_SLACK = 1e-6


@dataclass(frozen=True)
class RasterInfo:
    """What the engine needs to know about one input raster (no open handle is kept).

    ``path`` is the input as the user gave it (a file, a URL, ...); ``source.dataset`` is what
    GDAL opens.
    """

    path: str
    grid: Grid
    band_count: int  # bands in the file
    bands: tuple[int, ...]  # selected 1-based band indexes
    dtype: str
    nodata: float | None
    has_overviews: bool
    block_shape: tuple[int, int] = (1, 1)  # (rows, columns) of the file's blocks (band 1)
    source: Source | None = None  # None: ``path`` is a local file GDAL opens as it is
    role: str = "image"  # what messages call it: "before", "after", "third", ...

    @property
    def dataset(self) -> str:
        """What :func:`rasterio.open` takes for this image."""
        return self.source.dataset if self.source is not None else self.path

    @property
    def label(self) -> str:
        """The image as messages name it: ``the after image after.tif``."""
        role = "" if self.role == "image" else f"{self.role} "
        return f"the {role}image {self.name}"

    @property
    def name(self) -> str:
        """The file name (item id, list of names), as written in the output attributes."""
        return self.source.name if self.source is not None else Path(self.path).name


def pixel_grid(width: int, height: int) -> Grid:
    """Return the grid of an image paired pixel by pixel: one unit per pixel, y up (y = -row)."""
    return Grid(CRS.from_wkt(PIXEL_GRID_CRS), Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0), width, height)


def open_raster(
    path: Path | str | Source,
    bands: Sequence[int] | None = None,
    role: str = "image",
    *,
    on_pixel_grid: bool = False,
    assets: Sequence[str] | None = None,
) -> RasterInfo:
    """Open an input image, check it is usable and describe it.

    Args:
        path: a raster GDAL can open, a URL, a STAC item, a comma-separated list of single-band
            rasters (see :func:`mtrs_geo.sources.resolve_source`) or an already resolved source.
        bands: 1-based band indexes to use; None: all bands.
        role: what error messages call the image: "before", "after", "third", ...
        on_pixel_grid: pair images pixel by pixel: any georeferencing is ignored and the image
            lies on :func:`pixel_grid` (for plain PNG/JPEG pairs).
        assets: STAC asset keys to stack, in band order.

    Raises:
        InputError: unreadable file, no CRS, no geotransform, a band index out of range.

    """
    source = path if isinstance(path, Source) else resolve_source(path, role, assets)
    text = source.text
    path = source.dataset
    try:
        # A file without geotransform warns on open; it gets a clear InputError below instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                crs = ds.crs
                transform = ds.transform
                count = ds.count
                width, height = ds.width, ds.height
                dtypes = ds.dtypes
                nodata = ds.nodata
                has_overviews = count > 0 and bool(ds.overviews(1))
                block_shape = tuple(ds.block_shapes[0]) if count > 0 else (1, 1)
    except RasterioIOError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not a raster GDAL can open"
        raise InputError(f"cannot read {role} image {text}: {reason}") from exc
    if on_pixel_grid:
        crs, transform = pixel_grid(width, height).crs, pixel_grid(width, height).transform
    elif crs is None or transform.is_identity:
        problem = (
            "has no coordinate reference system (CRS)"
            if crs is None
            else "is not georeferenced (no geotransform)"
        )
        raise InputError(
            f"{role} image {text} {problem}: georeference it (e.g. gdal_edit.py -a_srs EPSG:XXXX)",
            cli_hint="or pair plain images pixel by pixel on a pixel grid: --pixel-grid",
        )
    grid = Grid(crs, transform, width, height)
    if crs.is_geographic:
        _, south, _, north = grid.bounds
        if south < -90.0 - _POLE_SLACK or north > 90.0 + _POLE_SLACK:
            raise InputError(
                f"{role} image {text} reaches latitude {south if south < -90 else north:.6g}, "
                "beyond a pole: its geotransform is wrong for a geographic CRS"
            )
    if count == 0:
        raise InputError(f"{role} image {text} has no bands")
    selected = tuple(range(1, count + 1)) if bands is None else tuple(int(b) for b in bands)
    if not selected:
        raise InputError(f"no band selected for the {role} image")
    bad = [b for b in selected if not 1 <= b <= count]
    if bad:
        raise InputError(
            f"band {bad[0]} is out of range for {role} image {source.name}, which has {count} "
            f"band{'s' if count != 1 else ''} (bands are numbered from 1)"
        )
    kinds = {np.dtype(dtypes[b - 1]).kind for b in selected}
    if kinds - {"u", "i", "f"}:
        raise InputError(f"{role} image {source.name} has non-numeric bands ({', '.join(dtypes)})")
    _check_last_block(path, text, role, selected, width, height, block_shape)
    return RasterInfo(
        path=text,
        grid=grid,
        band_count=count,
        bands=selected,
        dtype=dtypes[selected[0] - 1],
        nodata=nodata,
        has_overviews=has_overviews,
        block_shape=(int(block_shape[0]), int(block_shape[1])),
        source=source,
        role=role,
    )


def read_failure(path: Path | str, exc: Exception, role: str = "image") -> InputError:
    """Return the one-line error for a file GDAL opened but cannot decode (truncated, corrupt)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(f"cannot read {role} {path}: the file is truncated or corrupt ({reason})")


def _check_last_block(
    path: str,
    text: str,
    role: str,
    bands: tuple[int, ...],
    width: int,
    height: int,
    block_shape: tuple[int, ...],
) -> None:
    """Decode the file's last block: a truncated file fails here, before any work."""
    rows, cols = (max(1, int(v)) for v in block_shape[:2])
    row0, col0 = (height - 1) // rows * rows, (width - 1) // cols * cols
    window = Window(col0, row0, min(cols, width - col0), min(rows, height - row0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                ds.read(bands[0], window=window)
    except (RasterioIOError, rasterio.errors.RasterioError) as exc:
        raise read_failure(text, exc, f"{role} image") from exc


def align_longitudes(before: RasterInfo, after: RasterInfo) -> RasterInfo:
    """Return ``after`` with its longitudes moved by a turn to meet ``before`` (antimeridian)."""
    grid = unwrap_longitudes(after.grid, before.grid)
    return after if grid is after.grid else dataclasses.replace(after, grid=grid)


def check_pair(before: RasterInfo, after: RasterInfo, info: ModelInfo | None = None) -> None:
    """Check the selected bands of both images fit each other and the model.

    Raises:
        InputError: band counts differ after selection, or images paired on a pixel grid differ
            in size.
        ModelError: the model needs a different number of bands.

    """
    pixel_crs = pixel_grid(1, 1).crs
    sizes = [(info.grid.width, info.grid.height) for info in (before, after)]
    if before.grid.crs == pixel_crs and after.grid.crs == pixel_crs and sizes[0] != sizes[1]:
        raise InputError(
            f"images paired pixel by pixel must have one size: {before.label} is "
            f"{sizes[0][0]} x {sizes[0][1]} px, {after.label} {sizes[1][0]} x {sizes[1][1]} px"
        )
    nb, na = len(before.bands), len(after.bands)
    if nb != na:
        raise InputError(
            f"band count mismatch: {nb} band{'s' if nb != 1 else ''} selected in {before.label}, "
            f"{na} in {after.label}; choose matching bands"
        )
    if info is not None and info.in_channels is not None and info.in_channels != nb:
        which = " (red, green and blue)" if info.in_channels == 3 else ""
        raise ModelError(
            f"model {info.name!r} takes {info.in_channels} bands but {nb} are selected; "
            f"choose {info.in_channels} of them{which}"
        )
