"""Read one window of the common grid from an input image.

An image already on the common grid's pixel lattice is read with plain windows. Any other image is
read through :class:`rasterio.vrt.WarpedVRT` window by window (bilinear for the data, nearest
neighbour for the validity mask), so a scene is never reprojected whole in memory.
"""

from __future__ import annotations

import warnings
from types import TracebackType

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from mtrs_geo.grid import Grid, grid_offset, same_lattice
from mtrs_geo.read import RasterInfo, read_failure

# GDAL warper memory per window (bytes); more than a tile's worth so one window is one warp chunk.
_WARP_MEM_LIMIT = 256 * 1024 * 1024


class AlignedReader:
    """Reads windows of ``grid`` from one image as ``(data float32 (C, h, w), valid bool (h, w))``.

    Owns its dataset handles (GDAL handles must not be shared between threads): open one reader per
    thread. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, info: RasterInfo, grid: Grid) -> None:
        self.info = info
        self.grid = grid
        self.bands = list(info.bands)
        self.on_lattice = same_lattice(info.grid, grid)
        # Only floating-point bands can hold NaN or infinity.
        self._float_source = np.dtype(info.dtype).kind == "f"
        with warnings.catch_warnings():  # an image on a pixel grid has no georeferencing
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._src: DatasetReader = rasterio.open(info.dataset)
        self._validity = _validity_source(self._src, self.bands)
        self._data_vrt: WarpedVRT | None = None
        self._mask_vrt: WarpedVRT | None = None
        if not self.on_lattice:
            common = {
                "crs": grid.crs,
                "transform": grid.transform,
                "width": grid.width,
                "height": grid.height,
                "warp_mem_limit": _WARP_MEM_LIMIT,
            }
            if info.grid.transform != self._src.transform:
                # The image was moved by a turn of longitude to meet the other one (antimeridian).
                common["src_transform"] = info.grid.transform
            self._data_vrt = WarpedVRT(self._src, resampling=Resampling.bilinear, **common)
            # The alpha band of a nearest-neighbour warp is the source mask (nodata, per-dataset
            # mask,
            # footprint) carried onto the grid without blurring its edges.
            self._mask_vrt = WarpedVRT(
                self._src, resampling=Resampling.nearest, add_alpha=True, **common
            )

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` of the common grid as float32; invalid pixels are 0."""
        data, valid = self.read_native(window)
        return data.astype(np.float32, copy=False), valid

    def read_native(
        self, window: Window, out: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` in the image's own dtype; invalid pixels (nodata, outside) are 0.

        Integer data stays integer (a quarter of float32's bytes through the tile queue).
        ``out``: ``(data (C, h, w), valid (h, w))`` arrays to read into (a recycled buffer);
        ignored when their shape or dtype does not fit.

        Raises:
            InputError: the file cannot be decoded there (truncated, corrupt blocks), naming it.

        """
        try:
            return self._read_native(window, out)
        except rasterio.errors.RasterioError as exc:
            raise read_failure(self.info.path, exc) from exc

    def _read_native(
        self, window: Window, out: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        shape = (len(self.bands), int(window.height), int(window.width))
        if out is not None and (
            out[0].shape != shape or out[0].dtype != np.dtype(self.info.dtype)
            or out[1].shape != shape[1:]
        ):  # fmt: skip
            out = None
        if self._data_vrt is None or self._mask_vrt is None:
            data, valid = self._read_plain(window, out)
        else:
            data = self._data_vrt.read(
                self.bands, window=window, out=out[0] if out is not None else None
            )
            mask = self._mask_vrt.read(self._mask_vrt.count, window=window)
            valid = np.greater(mask, 0, out=out[1] if out is not None else None)
        if self._float_source:
            valid &= np.all(np.isfinite(data), axis=0)
        if not valid.all():
            data[:, ~valid] = 0
        return data, valid

    def _read_plain(
        self, window: Window, out: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of an image on the grid's lattice (the part outside it stays invalid)."""
        col0, row0 = grid_offset(self.info.grid, self.grid)
        height, width = int(window.height), int(window.width)
        if out is None:
            data = np.empty((len(self.bands), height, width), dtype=self.info.dtype)
            valid = np.empty((height, width), dtype=bool)
        else:
            data, valid = out
        wanted = Window(window.col_off + col0, window.row_off + row0, width, height)
        image = Window(0, 0, self.info.grid.width, self.info.grid.height)
        try:
            inside = wanted.intersection(image)
        except rasterio.errors.WindowError:
            data.fill(0)
            valid.fill(False)
            return data, valid  # the window lies wholly outside the image
        r0 = int(inside.row_off - wanted.row_off)
        c0 = int(inside.col_off - wanted.col_off)
        h, w = int(inside.height), int(inside.width)
        if (r0, c0, h, w) == (0, 0, height, width):
            # The whole window lies inside the image: read straight into the result.
            self._src.read(self.bands, window=inside, out=data)
            valid[...] = self._read_validity(data, inside)
        else:
            data.fill(0)
            valid.fill(False)
            part = self._src.read(self.bands, window=inside)
            data[:, r0 : r0 + h, c0 : c0 + w] = part
            valid[r0 : r0 + h, c0 : c0 + w] = self._read_validity(part, inside)
        return data, valid

    def _read_validity(self, data: np.ndarray, window: Window) -> np.ndarray | bool:
        """Return the validity of ``data`` read from ``window`` (a bool when all valid)."""
        if self._validity == "all":
            return True
        if self._validity == "nodata":
            # What GDAL's nodata mask says, from the pixels already read: no band equals nodata.
            return np.all(data != data.dtype.type(self._src.nodatavals[self.bands[0] - 1]), axis=0)
        masks = self._src.read_masks(self.bands, window=window)
        return np.all(masks > 0, axis=0)

    def close(self) -> None:
        """Close the VRTs and the dataset."""
        for handle in (self._data_vrt, self._mask_vrt):
            if handle is not None:
                handle.close()
        self._src.close()

    def __enter__(self) -> AlignedReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _validity_source(src: DatasetReader, bands: list[int]) -> str:
    """How to find valid pixels of plain reads: ``all``, ``nodata`` (from the data) or ``masks``.

    ``all``: no band has nodata, a mask or alpha, so GDAL's masks would be all 255. ``nodata``: the
    only mask is an integer nodata value, which the data itself shows without a second read.
    Anything else (per-dataset masks, alpha bands, float nodata) reads GDAL's masks.
    """
    flags = [src.mask_flag_enums[band - 1] for band in bands]
    if all(f == [MaskFlags.all_valid] for f in flags):
        return "all"
    values = {src.nodatavals[band - 1] for band in bands}
    dtypes = {np.dtype(src.dtypes[band - 1]) for band in bands}
    if len(values) != 1 or len(dtypes) != 1 or any(f != [MaskFlags.nodata] for f in flags):
        return "masks"
    nodata, dtype = values.pop(), dtypes.pop()
    if dtype.kind in "ui" and nodata is not None and float(nodata).is_integer():
        limits = np.iinfo(dtype)
        if limits.min <= nodata <= limits.max:
            return "nodata"
    return "masks"
