"""Turn a user's input string into something rasterio opens: files, URLs, STAC items, band lists.

One input image (BEFORE or AFTER) can be given as

- a local raster file (anything GDAL opens);
- an HTTP(S), S3, Google Cloud Storage or Azure URL of a raster (a COG is read with range requests
  through GDAL's virtual file systems: ``/vsicurl/``, ``/vsis3/``, ``/vsigs/``, ``/vsiaz/``);
- a STAC item (a ``.json`` file or URL) whose chosen assets are stacked band after band;
- a comma-separated list of single-band rasters (``B04.tif,B03.tif,B02.tif``), stacked likewise.

Stacks are VRT documents held in memory (the XML text itself is what GDAL opens), so a resolved
source is a plain string that any thread or process can open again; nothing is written to disk.
Images without georeferencing (plain PNG/JPEG) are placed on a pixel grid by the reader
(:data:`PIXEL_GRID_CRS`, one unit per pixel).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from mtrs_geo.errors import InputError

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

# URL scheme -> GDAL virtual file system prefix.
_VSI_PREFIXES = {
    "http": "/vsicurl/",
    "https": "/vsicurl/",
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
}
# The engineering CRS of images paired pixel by pixel: x to the right, y up, one unit per pixel
# (pixel (col, row) has its corner at x = col, y = -row, as QGIS shows an image without a CRS).
PIXEL_GRID_CRS = 'LOCAL_CS["pixel grid",UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'
_VRT_PREFIX = "<VRTDataset"


@dataclass(frozen=True)
class Source:
    """One input image, resolved.

    Attributes:
        text: what the user gave.
        dataset: what :func:`rasterio.open` takes: a file path, a GDAL virtual path
            (``/vsicurl/https://...``) or a VRT document (XML text).
        name: a short name for output attributes and messages (file name, item id).
        files: every file or GDAL virtual path the source reads (local ones are protected from
            being overwritten by an output).

    """

    text: str
    dataset: str
    name: str
    files: tuple[str, ...]

    @property
    def is_stack(self) -> bool:
        """Whether the source is a VRT stack built here (several files or assets)."""
        return self.dataset.startswith(_VRT_PREFIX)


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL of a scheme GDAL can read (http, https, s3, gs, az)."""
    return urlparse(text).scheme.lower() in _VSI_PREFIXES and "://" in text


def gdal_path(location: str) -> str:
    """Return the path GDAL opens for a local path or a URL (``/vsicurl/...`` for HTTP(S))."""
    if location.startswith("/vsi"):
        return location
    if is_url(location):
        parsed = urlparse(location)
        prefix = _VSI_PREFIXES[parsed.scheme.lower()]
        if prefix == "/vsicurl/":
            return prefix + location
        return prefix + parsed.netloc + parsed.path
    return location


def _display_name(location: str) -> str:
    """Return the file name of a path or URL (its last path segment)."""
    if is_url(location):
        return Path(urlparse(location).path).name or location
    return Path(location).name or location


def resolve_in(text: str, base: Path) -> str:
    """Make the relative local paths of an input string relative to ``base`` (URLs unchanged).

    A comma-separated list is resolved part by part.
    """
    if not text or is_url(text) or text.startswith("/vsi"):
        return text
    whole = base / Path(text).expanduser()
    if whole.exists() or "," not in text:
        return str(whole)
    return ",".join(resolve_in(part.strip(), base) for part in text.split(","))


def local_inputs(image: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """List the local files an input names, opening nothing (URLs, GDAL paths left out).

    ``image`` is an input string (a list is split) or the files of a resolved :class:`Source`.
    """
    if isinstance(image, str | os.PathLike):
        text = os.fspath(image)
        parts = _list_parts(text) or [text]
    else:
        parts = list(image)
    return [part for part in parts if part and not is_url(part) and not part.startswith("/vsi")]


@contextlib.contextmanager
def quiet_open(dataset: str) -> Iterator[DatasetReader]:
    """Open ``dataset`` with rasterio, without the warning an image lacking georeferencing gives."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        handle = rasterio.open(dataset)
    with handle:
        yield handle


def _list_parts(text: str) -> list[str] | None:
    """Split a comma-separated list of inputs (None: not a list)."""
    if "," not in text or Path(text).exists():
        return None
    parts = [part.strip() for part in text.split(",")]
    return parts if len(parts) > 1 else None


def _is_stac(text: str) -> bool:
    location = urlparse(text).path if is_url(text) else text
    return location.lower().endswith(".json")


def resolve_source(
    text: str | os.PathLike[str], role: str = "image", assets: Sequence[str] | None = None
) -> Source:
    """Resolve one input image: a file, a URL, a STAC item or a comma-separated list of rasters.

    Args:
        text: the user's input (a path or a string).
        role: "before" or "after", used in error messages.
        assets: the STAC asset keys to stack, in band order; None: the item's ``visual`` asset.

    Raises:
        InputError: a missing local file, a STAC item that cannot be read or lacks an asset,
            a list whose rasters cannot be stacked (different CRSs, rotated grids).

    """
    text = os.fspath(text)
    if _is_stac(text):
        return _stac_source(text, role, assets)
    parts = _list_parts(text)
    if parts is not None:
        if any(not part for part in parts):
            raise InputError(f"{role} image list {text!r} has an empty entry")
        files = [_checked_location(part, role) for part in parts]
        return Source(text, stack_vrt(files, role), ",".join(map(_display_name, parts)),
                      tuple(files))  # fmt: skip
    location = _checked_location(text, role)
    return Source(text, location, _display_name(text), (location,))


def _checked_location(text: str, role: str) -> str:
    """GDAL's path of one file or URL; a local file must exist."""
    location = gdal_path(text)
    if location.startswith("/vsi"):
        return location
    if not Path(location).exists():
        raise InputError(f"{role} image {text} does not exist")
    return str(Path(location).absolute())


def _stac_source(text: str, role: str, assets: Sequence[str] | None) -> Source:
    """Resolve a STAC item: its chosen assets, one asset as it is or several stacked as a VRT."""
    import pystac

    if not is_url(text) and not Path(text).exists():
        raise InputError(f"{role} STAC item {text} does not exist")
    try:
        item = pystac.Item.from_file(text)
    except Exception as exc:  # noqa: BLE001 - pystac raises many types for a bad document
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {role} STAC item {text}: {reason}") from exc
    available = list(item.assets)
    if assets is None:
        if "visual" not in item.assets:
            raise InputError(
                f"{role} STAC item {item.id} has no 'visual' asset: choose the assets to stack, "
                f"in band order, among {', '.join(available) or '(none)'}"
            )
        assets = ("visual",)
    missing = [key for key in assets if key not in item.assets]
    if missing:
        raise InputError(
            f"{role} STAC item {item.id} has no asset {missing[0]!r}; it has "
            f"{', '.join(available) or 'none'}"
        )
    files = [gdal_path(str(item.assets[key].get_absolute_href())) for key in assets]
    name = f"{item.id}:{','.join(assets)}"
    if len(files) == 1:
        return Source(text, files[0], name, tuple(files))
    return Source(text, stack_vrt(files, role), name, tuple(files))


@dataclass(frozen=True)
class _Part:
    path: str
    width: int
    height: int
    transform: tuple[float, ...]
    crs_wkt: str
    dtype: str
    nodata: float | None
    block: tuple[int, int]


def _describe(path: str, role: str) -> _Part:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.count != 1:
                    raise InputError(
                        f"{role} image {path} has {ds.count} bands: a stack takes single-band "
                        "rasters"
                    )
                return _Part(
                    path, ds.width, ds.height, tuple(ds.transform)[:6],
                    ds.crs.to_wkt() if ds.crs else "", ds.dtypes[0], ds.nodata,
                    (int(ds.block_shapes[0][0]), int(ds.block_shapes[0][1])),
                )  # fmt: skip
    except RasterioIOError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not a raster GDAL can open"
        raise InputError(f"cannot read {role} image {path}: {reason}") from exc


_VRT_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32",
    "float64": "Float64",
}  # fmt: skip


def stack_vrt(paths: Sequence[str], role: str = "image") -> str:
    """Return a VRT document stacking single-band rasters, band ``i`` from ``paths[i]``.

    The stack's grid is the first raster's; the others (same CRS, north-up) are placed by their
    bounds and resampled onto it (bilinear) when their pixel size differs (a 20 m band under a
    10 m one). The band type is the smallest type that holds every raster's values.

    Raises:
        InputError: a raster cannot be read, has more than one band, or its CRS or orientation
            differs from the first's.

    """
    parts = [_describe(path, role) for path in paths]
    first = parts[0]
    a, b, c, d, e, f = first.transform
    if b or d or e >= 0:
        raise InputError(f"{role} image {first.path} is rotated or not north-up: cannot stack it")
    dtype = np.result_type(*[np.dtype(part.dtype) for part in parts]).name
    if dtype not in _VRT_TYPES:
        raise InputError(f"{role} images of types {', '.join(p.dtype for p in parts)} cannot stack")
    srs = f"<SRS>{escape(first.crs_wkt)}</SRS>" if first.crs_wkt else ""
    lines = [
        f'<VRTDataset rasterXSize="{first.width}" rasterYSize="{first.height}">',
        srs,
        f"<GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
    ]
    for band, part in enumerate(parts, start=1):
        pa, pb, pc, pd, pe, pf = part.transform
        if part.crs_wkt != first.crs_wkt or pb or pd or pe >= 0:
            raise InputError(
                f"{role} images {first.path} and {part.path} differ in CRS or orientation: "
                "cannot stack them"
            )
        # The part's footprint in the first raster's pixels.
        x_off, y_off = (pc - c) / a, (pf - f) / e
        x_size, y_size = part.width * pa / a, part.height * pe / e
        if not all(math.isfinite(v) for v in (x_off, y_off, x_size, y_size)):
            raise InputError(f"{role} image {part.path} has an unusable geotransform")
        nodata = f"<NoDataValue>{part.nodata!r}</NoDataValue>" if part.nodata is not None else ""
        resampling = (
            "" if (x_size, y_size) == (part.width, part.height) else ' resampling="bilinear"'
        )
        lines += [
            f'<VRTRasterBand dataType="{_VRT_TYPES[dtype]}" band="{band}">',
            nodata,
            f"<SimpleSource{resampling}>",
            f'<SourceFilename relativeToVRT="0">{escape(part.path)}</SourceFilename>',
            "<SourceBand>1</SourceBand>",
            f'<SourceProperties RasterXSize="{part.width}" RasterYSize="{part.height}" '
            f'DataType="{_VRT_TYPES[part.dtype]}" BlockXSize="{part.block[1]}" '
            f'BlockYSize="{part.block[0]}"/>',
            f'<SrcRect xOff="0" yOff="0" xSize="{part.width}" ySize="{part.height}"/>',
            f'<DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{x_size!r}" ySize="{y_size!r}"/>',
            "</SimpleSource>",
            "</VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "".join(lines)


def remote_options(*inputs: str | os.PathLike[str]) -> dict[str, str]:
    """GDAL settings for reading ``inputs``: with every input remote, no directory listing.

    GDAL lists an image's folder and probes for sidecar files (``.aux.xml``, ``.ovr``, ``.msk``)
    at each open: over HTTP that is a request each (45 requests instead of 3 to describe a COG
    pair). Local inputs keep the default, so that their sidecar files are found.
    """
    if all(not local_inputs(image) for image in inputs):
        return {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    return {}
