"""Reading image pairs and masks from disk, and the per-image normalization shared with the engine.

Every image comes back as ``(C, H, W)`` float32 in its own units; :func:`normalize_image` applies
the engine's percentile stretch with statistics of that one image, so a model sees training samples
exactly as it sees engine tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mtrs_geo.errors import InputError
from mtrs_geo.normalize import band_stats, percentile_stretch

RASTER_SUFFIXES = (".tif", ".tiff", ".img", ".vrt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", *RASTER_SUFFIXES)


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Read an image as ``(channels, H, W)`` float32 (alpha dropped, grey repeated).

    Args:
        path: PNG/JPEG/BMP (read with Pillow) or a GDAL raster (read with rasterio).
        channels: number of bands to return; extra bands are dropped, a single band is repeated.

    Raises:
        InputError: the file is missing or unreadable.

    """
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        if path.suffix.lower() in RASTER_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                data = src.read().astype(np.float32)
        else:
            with Image.open(path) as opened:
                img: Image.Image = opened
                if img.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr"):
                    img = img.convert("RGB")
                array = np.asarray(img, dtype=np.float32)
            data = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the user's file
        raise InputError(f"cannot read image {path}: {exc}") from exc
    if data.shape[0] >= channels:
        return np.ascontiguousarray(data[:channels])
    return np.ascontiguousarray(np.repeat(data[:1], channels, axis=0))


def read_mask(path: Path) -> np.ndarray:
    """Read a binary mask as ``(H, W)`` float32 in {0, 1}.

    Masks stored as 0/1 and as 0/255 both work: with a maximum above 1 the cut is at half the range
    (so JPEG-like noise near 0 or 255 does not flip pixels); colour masks count any lit channel.
    """
    if not path.is_file():
        raise InputError(f"mask not found: {path}")
    try:
        if path.suffix.lower() in RASTER_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                array = src.read(1).astype(np.float32)
        else:
            with Image.open(path) as opened:
                img: Image.Image = opened
                if img.mode == "P":
                    img = img.convert("RGB")
                array = np.asarray(img, dtype=np.float32)
                if array.ndim == 3:
                    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
                    array = colour.max(axis=-1)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read mask {path}: {exc}") from exc
    return binarize_mask(array)


def binarize_mask(array: np.ndarray) -> np.ndarray:
    """Map labels to {0, 1} float32: ``> 0`` when the maximum is <= 1, else ``>= 127.5``."""
    peak = float(array.max()) if array.size else 0.0
    if peak <= 1.0:
        return (array > 0).astype(np.float32)
    return (array >= 127.5).astype(np.float32)


def normalize_image(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Percentile-stretch one ``(C, H, W)`` image with its own statistics (as the engine does)."""
    return percentile_stretch(image, band_stats(image, valid))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a ``(C, H, W)`` float array to ``(C, height, width)``."""
    if image.shape[-2:] == (height, width):
        return image
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return out[0].numpy()


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a ``(H, W)`` mask."""
    if mask.shape == (height, width):
        return mask
    rows = (np.arange(height) * mask.shape[0] / height).astype(np.int64)
    cols = (np.arange(width) * mask.shape[1] / width).astype(np.int64)
    return np.ascontiguousarray(mask[rows][:, cols])
