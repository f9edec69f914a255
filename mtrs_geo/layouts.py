"""The on-disk layouts of change data: which files make a pair, and how to read them as arrays.

One reader per layout, shared by CRAFT (:mod:`mtrs_geo.craft.sources`), the training datasets
(:mod:`mtrs_geo.models.data`), evaluation (:mod:`mtrs_geo.models.evaluate`) and
``scripts/oscd_scenes.py``:

- change folders (LEVIR-CD style): ``A/ B/`` images and a label folder (``label/``, ``mask/``,
  ...) of binary change masks, paired by file name; not georeferenced
  (:func:`folder_pairs`, :func:`read_pixels`, :func:`read_image`, :func:`read_mask`);
- OSCD cities as distributed: ``<city>/imgs_1/ imgs_2/`` of per-band Sentinel-2 GeoTIFFs and
  ``cm/<city>-cm.tif`` (1 = no change, 2 = change) (:func:`oscd_cities`,
  :func:`read_oscd_bands`, :func:`read_oscd_change`);
- georeferenced scenes: a folder with ``before.*`` and ``after.*`` rasters and one vector file of
  change polygons (:func:`scene_files`, :func:`find_scene_files`, :func:`read_change_polygons`,
  :func:`rasterize_changes`).

Functions here list files and return numpy arrays (or a GeoDataFrame of polygons); what a caller
makes of them (chips, samples, scores) stays with the caller. Bad inputs raise
:class:`~mtrs_geo.errors.InputError`. rasterio and geopandas are imported when used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mtrs_geo.errors import InputError

if TYPE_CHECKING:
    import geopandas as gpd
    from affine import Affine

# --- change folders (A/ B/ label/) -------------------------------------------------------------

RASTER_SUFFIXES = (".tif", ".tiff", ".img", ".vrt")  # read with rasterio, the rest with Pillow
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", *RASTER_SUFFIXES)
LABEL_DIRS = ("label", "labels", "mask", "masks", "gt", "OUT")
# Pillow modes converted to RGB when a caller wants display colours rather than stored values
COLOUR_MODES = ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr")


@dataclass(frozen=True)
class FolderPair:
    """One pair of a change folder.

    Attributes:
        name: the before image's file name in ``A/`` (``train_1.png``).
        before, after: the ``A/`` and ``B/`` images.
        label: the change mask in the label folder.

    """

    name: str
    before: Path
    after: Path
    label: Path

    @property
    def stem(self) -> str:
        """The pair's name without its suffix."""
        return Path(self.name).stem


def image_files(folder: Path) -> dict[str, Path]:
    """Map the stem of every image in ``folder`` to its path (sorted by file name; {} if none)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def find_label_dir(root: Path) -> Path | None:
    """Return the label folder of a change folder (the first of :data:`LABEL_DIRS`), or None."""
    for name in LABEL_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def _same_stem(folder: Path, name: str, stems: dict[str, Path]) -> Path | None:
    """Find the file ``name`` in ``folder``, or else the image of the same stem (another suffix)."""
    exact = folder / name
    if exact.is_file():
        return exact
    return stems.get(Path(name).stem)


def folder_pairs(
    root: Path, names: Iterable[str] | None = None
) -> tuple[list[FolderPair], list[str]]:
    """List the pairs of an ``A/ B/ label/`` change folder.

    Args:
        root: folder holding ``A/``, ``B/`` and a label folder (one of :data:`LABEL_DIRS`).
        names: before-image file names to use (e.g. a list file's lines); default: every image
            in ``A/``, sorted.

    Returns:
        The pairs whose after image and label exist (same file name, or else the same stem), in
        the order of ``names``; and the names left out for want of one.

    Raises:
        InputError: ``A/``, ``B/`` or the label folder is missing.

    """
    root = Path(root)
    for sub in ("A", "B"):
        if not (root / sub).is_dir():
            raise InputError(f"{root}: missing {sub}/ folder (A/ B/ label/ layout)")
    labels = find_label_dir(root)
    if labels is None:
        raise InputError(f"{root}: no label folder (one of {', '.join(LABEL_DIRS)})")
    if names is None:
        names = sorted(p.name for p in (root / "A").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    after_stems, label_stems = image_files(root / "B"), image_files(labels)
    pairs: list[FolderPair] = []
    skipped: list[str] = []
    for name in names:
        after = _same_stem(root / "B", name, after_stems)
        label = _same_stem(labels, name, label_stems)
        if after is None or label is None:
            skipped.append(name)
        else:
            pairs.append(FolderPair(name, root / "A" / name, after, label))
    return pairs, skipped


def read_pixels(path: Path, to_rgb: Sequence[str] = (), what: str = "image") -> np.ndarray:
    """Read an image file's values as stored: ``(H, W)`` or ``(H, W, C)``, in its own dtype.

    Args:
        path: a GDAL raster (:data:`RASTER_SUFFIXES`, read with rasterio) or a picture (Pillow).
        to_rgb: Pillow modes converted to RGB first (e.g. :data:`COLOUR_MODES` for display
            colours); by default a palette image gives its indexes (class maps).
        what: what the file is, for the error message.

    Raises:
        InputError: the file is missing or cannot be decoded.

    """
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        if path.suffix.lower() in RASTER_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                data = src.read()
            return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
        with Image.open(path) as opened:
            img: Image.Image = opened
            if img.mode in to_rgb:
                img = img.convert("RGB")
            return np.asarray(img)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the user's file
        raise InputError(f"cannot read {what} {path}: {exc}") from exc


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Read an image as ``(channels, H, W)`` float32 (alpha dropped, grey repeated).

    Args:
        path: PNG/JPEG/BMP/WebP (read with Pillow, colours as displayed) or a GDAL raster.
        channels: number of bands to return; extra bands are dropped, a single band is repeated.

    Raises:
        InputError: the file is missing or unreadable.

    """
    array = read_pixels(path, to_rgb=COLOUR_MODES).astype(np.float32)
    data = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if data.shape[0] >= channels:
        return np.ascontiguousarray(data[:channels])
    return np.ascontiguousarray(np.repeat(data[:1], channels, axis=0))


def read_mask(path: Path) -> np.ndarray:
    """Read a binary mask as ``(H, W)`` float32 in {0, 1}.

    Masks stored as 0/1 and as 0/255 both work: with a maximum above 1 the cut is at half the range
    (so JPEG-like noise near 0 or 255 does not flip pixels); colour masks count any lit channel,
    rasters their first band.
    """
    array = read_pixels(path, to_rgb=("P",), what="mask").astype(np.float32)
    if array.ndim == 3:
        if path.suffix.lower() in RASTER_SUFFIXES:
            array = array[..., 0]
        else:
            array = (array[..., :3] if array.shape[-1] >= 3 else array[..., :1]).max(axis=-1)
    return binarize_mask(array)


def binarize_mask(array: np.ndarray) -> np.ndarray:
    """Map labels to {0, 1} float32: ``> 0`` when the maximum is <= 1, else ``>= 127.5``."""
    peak = float(array.max()) if array.size else 0.0
    if peak <= 1.0:
        return (array > 0).astype(np.float32)
    return (array >= 127.5).astype(np.float32)


# --- OSCD cities -------------------------------------------------------------------------------

OSCD_RGB = ("B04", "B03", "B02")  # red, green, blue
OSCD_RGB_NIR = ("B04", "B03", "B02", "B08")  # plus near-infrared; all four on the 10 m grid
OSCD_DATES = ("imgs_1", "imgs_2")


def is_oscd_city(folder: Path) -> bool:
    """Whether ``folder`` is an OSCD city (``cm/`` and ``imgs_1/`` sub-folders)."""
    return (folder / "cm").is_dir() and (folder / "imgs_1").is_dir()


def oscd_cities(root: Path) -> list[Path]:
    """List the OSCD city folders under ``root``, sorted by name ([] when there are none)."""
    if not Path(root).is_dir():
        return []
    return sorted(p for p in Path(root).iterdir() if is_oscd_city(p))


def oscd_band_file(folder: Path, band: str) -> Path:
    """Return the GeoTIFF of one band (``*B04.tif``) in a city's ``imgs_1/`` or ``imgs_2/``."""
    matches = sorted(folder.glob(f"*{band}.tif"))
    if not matches:
        raise InputError(f"{folder}: no *{band}.tif band file (OSCD layout)")
    return matches[0]


def read_oscd_bands(
    folder: Path, bands: Sequence[str] = OSCD_RGB
) -> tuple[np.ndarray, Affine, Any]:
    """Read bands of one date of a city as ``(len(bands), H, W)`` float32 raw values.

    Returns:
        The stacked bands, and the first band's transform and CRS (None when it has none).

    Raises:
        InputError: a band file is missing, or the bands differ in size.

    """
    import rasterio

    with rasterio.open(oscd_band_file(folder, bands[0])) as src:
        layers = [src.read(1).astype(np.float32)]
        transform, crs = src.transform, src.crs
    for band in bands[1:]:
        with rasterio.open(oscd_band_file(folder, band)) as src:
            layers.append(src.read(1).astype(np.float32))
    shapes = {layer.shape for layer in layers}
    if len(shapes) != 1:
        raise InputError(f"{folder}: bands {', '.join(bands)} differ in size: {sorted(shapes)}")
    return np.stack(layers), transform, crs


def oscd_change(label: np.ndarray) -> np.ndarray:
    """Decode an OSCD change map as ``(H, W)`` bool.

    The maps as distributed hold 1 = no change and 2 = change (the dataset's README says 0/1);
    a map in another encoding goes through :func:`binarize_mask` (0/1 or 0/255).
    """
    values = set(np.unique(label).tolist())
    if 2 in values and values <= {1, 2}:
        return np.asarray(label == 2)
    return binarize_mask(label.astype(np.float32)) > 0


def read_oscd_change(city: Path) -> np.ndarray:
    """Read a city's ``cm/<city>-cm.tif`` as ``(H, W)`` bool change (see :func:`oscd_change`)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    labels = sorted((city / "cm").glob("*-cm.tif"))
    if not labels:
        raise InputError(f"{city}: no cm/<city>-cm.tif label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the maps carry no CRS
        with rasterio.open(labels[0]) as src:
            return oscd_change(src.read(1))


# --- georeferenced scenes ----------------------------------------------------------------------

SCENE_RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite")


def find_scene_files(folder: Path) -> tuple[Path, Path, Path]:
    """Return ``(before, after, polygons)`` of a scene folder.

    A scene folder holds ``before.*`` and ``after.*`` rasters (:data:`SCENE_RASTER_SUFFIXES`, any
    case) and exactly one vector file of change polygons (:data:`VECTOR_SUFFIXES`).

    Raises:
        InputError: naming what is missing.

    """
    if not folder.is_dir():
        raise InputError(f"scene folder not found: {folder}")
    files = sorted(folder.iterdir())

    def raster(stem: str) -> Path:
        for path in files:
            if path.stem.lower() == stem and path.suffix.lower() in SCENE_RASTER_SUFFIXES:
                return path
        raise InputError(f"{folder}: no {stem}.* raster (scenes layout)")

    vectors = [p for p in files if p.suffix.lower() in VECTOR_SUFFIXES]
    if len(vectors) != 1:
        raise InputError(f"{folder}: expected exactly one vector file of change polygons")
    return raster("before"), raster("after"), vectors[0]


def scene_files(folder: Path) -> tuple[Path, Path, Path] | None:
    """Return ``(before, after, polygons)`` of a scene folder, or None when it is not one."""
    try:
        return find_scene_files(folder)
    except InputError:
        return None


def scene_folders(folder: Path) -> list[Path]:
    """Scene folders of a split: the folder itself, or its sub-folders, in the scenes layout."""
    if scene_files(folder) is not None:
        return [folder]
    if not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if scene_files(p) is not None)


def read_change_polygons(path: Path, crs: Any = None) -> gpd.GeoDataFrame:
    """Read a scene's change polygons (any OGR format), reprojected to ``crs`` when given.

    Raises:
        InputError: the file cannot be read, or it has no CRS.

    """
    import geopandas as gpd

    try:
        polygons = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any OGR failure is a bad input file
        raise InputError(f"cannot read change polygons {path}: {exc}") from exc
    if polygons.crs is None:
        raise InputError(f"{path}: change polygons have no CRS")
    return polygons if crs is None else polygons.to_crs(crs)


def rasterize_changes(
    geometries: Iterable[Any],
    shape: tuple[int, int],
    transform: Affine,
    values: Iterable[int] | None = None,
    dtype: str = "uint8",
) -> np.ndarray:
    """Burn change polygons into a ``shape`` grid: each polygon's value (default 1), 0 elsewhere.

    Empty and missing geometries are left out; later polygons win where they overlap.
    """
    from rasterio.features import rasterize

    shapes = list(geometries)
    codes = [1] * len(shapes) if values is None else list(values)
    burn = [
        (geom, code)
        for geom, code in zip(shapes, codes, strict=True)
        if geom is not None and not geom.is_empty
    ]
    if not burn:
        return np.zeros(shape, dtype=dtype)
    return rasterize(burn, out_shape=shape, transform=transform, fill=0, dtype=dtype)
