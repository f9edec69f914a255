"""Synthetic georeferenced before/after pairs for the engine tests.

A smooth texture is defined in ground coordinates of one base CRS (metres) and rendered into each
image on that image's own grid (any CRS, resolution, dtype, band count, nodata border), so a ground
point has the same texture value in both images whatever their CRS. Planted changes are ground
polygons in the base CRS: inside them the after image gets a different, flat spectrum. Tests
therefore know exactly where on the ground the change is, and can check that detected polygons land
there.

Typical use::

    pair = make_pair(tmp_path)                                   # both UTM 33N, 10 m, 256 x 256
    pair = make_pair(tmp_path, after=ImageSpec(crs="EPSG:4326")) # after in lon/lat
    pair.before, pair.after        # Paths of the two GeoTIFFs
    pair.changes                   # planted shapely polygons, base CRS
    pair.changes_in("EPSG:4326")   # the same polygons in another CRS

Rendering works block by block (``BLOCK_ROWS`` rows at a time), so large benchmark scenes never hold
the whole image in memory; an image in the base CRS skips the coordinate transform and renders fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import Polygon, box

BASE_CRS = "EPSG:32633"  # UTM zone 33N (metres)
BASE_ORIGIN = (500_000.0, 5_000_000.0)  # lower-left ground corner of the default extent
BLOCK_ROWS = 512

# Value ranges the texture in [0, 1] is mapped to, per dtype: (offset, scale).
_DTYPE_RANGE: dict[str, tuple[float, float]] = {
    "uint8": (30.0, 190.0),
    "uint16": (500.0, 8000.0),
    "int16": (500.0, 8000.0),
    "float32": (0.02, 0.5),
    "float64": (0.02, 0.5),
}


@dataclass(frozen=True)
class ImageSpec:
    """How to render one image of a pair.

    Attributes:
        crs: the image's CRS (any pyproj string: UTM, EPSG:3857, EPSG:4326, ...).
        pixel_size_m: approximate ground pixel size in metres; the CRS-unit resolution is derived
            from it (degrees for EPSG:4326). Ignored when ``resolution`` is given.
        resolution: pixel size in the image CRS's units (overrides ``pixel_size_m``).
        extent: ground extent ``(xmin, ymin, xmax, ymax)`` in the base CRS; None: the pair's extent.
        shift_px: shift of the pixel lattice in pixels ``(dx, dy)`` (sub-pixel misregistration of
            grids).
        dtype: numpy dtype name of the stored values.
        bands: number of bands.
        nodata: nodata value written in the file's metadata (and in the border); None: no nodata
            value.
        nodata_border: width in pixels of a nodata border on every side (uses ``nodata``, or an
            internal mask when ``mask_border`` is set).
        mask_border: mark the border invalid with a GDAL internal dataset mask instead of a nodata
            value.
        gain: radiometric gain applied to the texture (a different sun or sensor at the other date).
        write_crs: False writes a file without any CRS (for the missing-CRS error).
        driver: GDAL driver name.
    """

    crs: str = BASE_CRS
    pixel_size_m: float = 10.0
    resolution: float | None = None
    extent: tuple[float, float, float, float] | None = None
    shift_px: tuple[float, float] = (0.0, 0.0)
    dtype: str = "uint8"
    bands: int = 3
    nodata: float | None = None
    nodata_border: int = 0
    mask_border: bool = False
    gain: float = 1.0
    write_crs: bool = True
    driver: str = "GTiff"


def default_extent(size_m: float = 2560.0) -> tuple[float, float, float, float]:
    """A square ground extent of ``size_m`` metres in the base CRS."""
    x0, y0 = BASE_ORIGIN
    return (x0, y0, x0 + size_m, y0 + size_m)


def default_changes(
    extent: tuple[float, float, float, float] | None = None,
) -> list[Polygon]:
    """Four planted changes in ``extent``: two rectangles, an L shape and a square ring (a hole)."""
    xmin, ymin, xmax, ymax = extent or default_extent()
    w, h = xmax - xmin, ymax - ymin

    def at(fx: float, fy: float) -> tuple[float, float]:
        return (xmin + fx * w, ymin + fy * h)

    rect1 = box(*at(0.15, 0.60), *at(0.35, 0.80))
    rect2 = box(*at(0.60, 0.15), *at(0.72, 0.30))
    ell = Polygon(
        [
            at(0.55, 0.55),
            at(0.85, 0.55),
            at(0.85, 0.65),
            at(0.67, 0.65),
            at(0.67, 0.85),
            at(0.55, 0.85),
        ]
    )
    ring = box(*at(0.15, 0.15), *at(0.40, 0.40)).difference(box(*at(0.22, 0.22), *at(0.33, 0.33)))
    assert isinstance(ring, Polygon)
    return [rect1, rect2, ell, ring]


@dataclass(frozen=True)
class ScenePair:
    """A generated pair: file paths, the planted changes (base CRS) and the pair's ground extent."""

    before: Path
    after: Path
    changes: list[Polygon]
    extent: tuple[float, float, float, float]
    base_crs: str = BASE_CRS
    specs: tuple[ImageSpec, ImageSpec] = field(default=(ImageSpec(), ImageSpec()))

    def changes_in(self, crs: str) -> list[Polygon]:
        """The planted polygons transformed to ``crs`` (densified edges)."""
        return [reproject_geometry(p, self.base_crs, crs) for p in self.changes]

    @property
    def change_union(self) -> shapely.Geometry:
        """Union of the planted polygons (base CRS)."""
        return shapely.union_all(self.changes)


def reproject_geometry(geom: Polygon, src_crs: str, dst_crs: str) -> Polygon:
    """Transform a polygon between CRSs, densifying edges to about 1/50 of the extent first."""
    if CRS.from_user_input(src_crs) == CRS.from_user_input(dst_crs):
        return geom
    xmin, ymin, xmax, ymax = geom.bounds
    dense = shapely.segmentize(geom, max(xmax - xmin, ymax - ymin) / 50.0)
    tr = Transformer.from_crs(src_crs, dst_crs, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))

    out = shapely.transform(dense, project)
    assert isinstance(out, Polygon)
    return out


def _waves(band: int, seed: int) -> list[tuple[float, float, float, float]]:
    """Plane waves of one band's texture: ``(amplitude, kx, ky, phase)``, k in radians per metre."""
    rng = np.random.default_rng(1000 * seed + band)
    amps = rng.uniform(0.5, 1.0, size=5)
    waves = []
    for amp in amps:
        wavelength = rng.uniform(150.0, 900.0)
        angle = rng.uniform(0.0, np.pi)
        phase = rng.uniform(0.0, 2 * np.pi)
        k = 2 * np.pi / wavelength
        waves.append((float(amp / amps.sum()), k * np.cos(angle), k * np.sin(angle), phase))
    return waves


def texture(x: np.ndarray, y: np.ndarray, band: int, seed: int = 0) -> np.ndarray:
    """Smooth ground texture in [0, 1] at base-CRS coordinates (metres), one pattern per band.

    Sum of a few plane waves of wavelengths 150-900 m: smooth at 10 m pixels (so resampling errors
    stay small), varied enough that every tile holds structure.
    """
    xr = np.asarray(x, dtype=np.float64) - BASE_ORIGIN[0]
    yr = np.asarray(y, dtype=np.float64) - BASE_ORIGIN[1]
    total = np.zeros(np.broadcast(xr, yr).shape, dtype=np.float64)
    for amp, kx, ky, phase in _waves(band, seed):
        total += amp * np.sin(kx * xr + ky * yr + phase)
    return 0.5 + 0.5 * total


def texture_on_axes(x: np.ndarray, y: np.ndarray, band: int, seed: int = 0) -> np.ndarray:
    """:func:`texture` on the grid ``y[:, None] x x[None, :]`` (a north-up image in the base CRS).

    Same values, but each wave is separable (sin(a + b) = sin a cos b + cos a sin b), so a block
    costs a few outer products instead of one sine per pixel and wave: fast enough for
    benchmark-size
        scenes.
    """
    xr = np.asarray(x, dtype=np.float64) - BASE_ORIGIN[0]
    yr = np.asarray(y, dtype=np.float64) - BASE_ORIGIN[1]
    total = np.zeros((yr.size, xr.size), dtype=np.float32)
    for amp, kx, ky, phase in _waves(band, seed):
        ax, ay = kx * xr, ky * yr + phase
        total += np.outer(amp * np.cos(ay), np.sin(ax)).astype(np.float32)
        total += np.outer(amp * np.sin(ay), np.cos(ax)).astype(np.float32)
    return 0.5 + 0.5 * total


def changed_spectrum(band: int) -> float:
    """Flat texture value of a planted change in ``band``: alternately bright and dark."""
    return 0.95 if band % 2 == 0 else 0.05


def _pixel_to_map(
    transform: Affine, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates of pixel positions ``(cols, rows)`` (arrays, pixel units)."""
    t = transform
    return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f


def _image_grid(
    spec: ImageSpec, extent: tuple[float, float, float, float], base_crs: str
) -> tuple[Affine, int, int]:
    """Transform and size of an image covering the ground ``extent`` in its own CRS."""
    left, bottom, right, top = transform_bounds(base_crs, spec.crs, *extent, densify_pts=21)
    if spec.resolution is not None:
        res = spec.resolution
    else:
        ground_width = extent[2] - extent[0]
        res = (right - left) * spec.pixel_size_m / ground_width
    width = max(1, int(round((right - left) / res)))
    height = max(1, int(round((top - bottom) / res)))
    dx, dy = spec.shift_px
    transform = Affine(res, 0.0, left + dx * res, 0.0, -res, top - dy * res)
    return transform, width, height


def _render(
    path: Path,
    spec: ImageSpec,
    extent: tuple[float, float, float, float],
    base_crs: str,
    changes: Sequence[Polygon],
    seed: int,
) -> None:
    """Write one image, block by block."""
    transform, width, height = _image_grid(spec, extent, base_crs)
    offset, scale = _DTYPE_RANGE[spec.dtype]
    scale *= spec.gain
    same_crs = CRS.from_user_input(spec.crs) == CRS.from_user_input(base_crs)
    to_base = None if same_crs else Transformer.from_crs(spec.crs, base_crs, always_xy=True)
    change_geom = shapely.union_all(list(changes)) if changes else None
    if change_geom is not None:
        shapely.prepare(change_geom)
    profile: dict[str, object] = {
        "driver": spec.driver,
        "width": width,
        "height": height,
        "count": spec.bands,
        "dtype": spec.dtype,
        "transform": transform,
    }
    if spec.write_crs:
        profile["crs"] = CRS.from_user_input(spec.crs)
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    if spec.driver == "GTiff":
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    border = spec.nodata_border
    cols = np.arange(width, dtype=np.float64) + 0.5
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            for row0 in range(0, height, BLOCK_ROWS):
                rows = np.arange(row0, min(height, row0 + BLOCK_ROWS), dtype=np.float64) + 0.5
                shape = (rows.size, width)
                separable = to_base is None and transform.b == 0 and transform.d == 0
                if separable:
                    x_axis = transform.c + transform.a * cols
                    y_axis = transform.f + transform.e * rows
                    xs, ys = None, None
                else:
                    cc, rr = np.meshgrid(cols, rows)
                    xs, ys = _pixel_to_map(transform, cc, rr)
                    if to_base is not None:
                        xs, ys = to_base.transform(xs, ys)
                inside = np.zeros(shape, dtype=bool)
                if change_geom is not None:
                    if xs is None or ys is None:
                        inside = _inside_on_axes(change_geom, x_axis, y_axis)
                    else:
                        inside = shapely.contains_xy(change_geom, xs, ys)
                block = np.empty((spec.bands, *shape), dtype=np.float32)
                for band in range(spec.bands):
                    if xs is None or ys is None:
                        values = texture_on_axes(x_axis, y_axis, band, seed)
                    else:
                        values = texture(xs, ys, band, seed).astype(np.float32)
                    values[inside] = changed_spectrum(band)
                    block[band] = offset + scale * values
                valid = np.ones(shape, dtype=bool)
                if border:
                    row_ok = (rows >= border) & (rows < height - border)
                    col_ok = (cols >= border) & (cols < width - border)
                    valid &= row_ok[:, None] & col_ok[None, :]
                if spec.nodata is not None and not spec.mask_border:
                    block[:, ~valid] = spec.nodata
                if np.dtype(spec.dtype).kind in "ui":
                    np.rint(block, out=block)
                window = Window(0, row0, width, len(rows))
                dst.write(block.astype(spec.dtype), window=window)
                if spec.mask_border:
                    dst.write_mask((valid * 255).astype(np.uint8), window=window)


def _inside_on_axes(geom: shapely.Geometry, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points of the grid ``y[:, None] x x[None, :]`` inside ``geom`` (tested near its bounds)."""
    inside = np.zeros((y.size, x.size), dtype=bool)
    xmin, ymin, xmax, ymax = geom.bounds
    cols = np.flatnonzero((x >= xmin) & (x <= xmax))
    rows = np.flatnonzero((y >= ymin) & (y <= ymax))
    if cols.size and rows.size:
        xx, yy = np.meshgrid(x[cols], y[rows])
        sub = shapely.contains_xy(geom, xx, yy)
        inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = sub
    return inside


def make_pair(
    directory: Path,
    *,
    before: ImageSpec | None = None,
    after: ImageSpec | None = None,
    extent: tuple[float, float, float, float] | None = None,
    changes: Sequence[Polygon] | None = None,
    base_crs: str = BASE_CRS,
    seed: int = 0,
    names: tuple[str, str] = ("before.tif", "after.tif"),
) -> ScenePair:
    """Render a before/after pair into ``directory`` and return it with its planted changes.

    Args:
        directory: folder to write the two files into (created if missing).
        before: how to render the before image (default: base CRS, 10 m, uint8, 3 bands).
        after: how to render the after image (default: same as ``before``).
        extent: ground extent in ``base_crs`` (default: 2560 m square, i.e. 256 px at 10 m).
        changes: planted change polygons in ``base_crs`` (default: :func:`default_changes`);
            pass ``[]`` for a pair without change.
        base_crs: CRS of the ground texture, the extent and the change polygons (metres).
        seed: texture seed.
        names: file names of the before and after images.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    before = before or ImageSpec()
    after = after or before
    extent = extent or default_extent()
    planted = list(default_changes(extent) if changes is None else changes)
    before_path = directory / names[0]
    after_path = directory / names[1]
    _render(before_path, before, before.extent or extent, base_crs, [], seed)
    _render(after_path, after, after.extent or extent, base_crs, planted, seed)
    return ScenePair(before_path, after_path, planted, extent, base_crs, (before, after))


def planted_mask(
    changes: Sequence[Polygon],
    transform: Affine,
    width: int,
    height: int,
    crs: str,
    base_crs: str = BASE_CRS,
) -> np.ndarray:
    """Boolean ``(height, width)`` mask of a grid's pixel centres inside the planted changes."""
    cols = np.arange(width, dtype=np.float64) + 0.5
    rows = np.arange(height, dtype=np.float64) + 0.5
    cc, rr = np.meshgrid(cols, rows)
    xs, ys = _pixel_to_map(transform, cc, rr)
    if CRS.from_user_input(crs) != CRS.from_user_input(base_crs):
        xs, ys = Transformer.from_crs(crs, base_crs, always_xy=True).transform(xs, ys)
    geom = shapely.union_all(list(changes))
    return np.asarray(shapely.contains_xy(geom, xs, ys), dtype=bool)
