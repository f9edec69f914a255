"""Reading image pairs and masks from disk, and the per-image normalization shared with the engine.

Every image comes back as ``(C, H, W)`` float32 in its own units; :func:`normalize_image` applies
the engine's percentile stretch with statistics of that one image, so a model sees training samples
exactly as it sees engine tiles. The file readers belong to the change-folder layout
(:mod:`mtrs_geo.layouts`) and are re-exported here.
"""

from __future__ import annotations

import numpy as np

from mtrs_geo.layouts import (
    IMAGE_SUFFIXES,
    RASTER_SUFFIXES,
    binarize_mask,
    read_image,
    read_mask,
)
from mtrs_geo.normalize import band_stats, percentile_stretch

__all__ = [
    "IMAGE_SUFFIXES",
    "RASTER_SUFFIXES",
    "binarize_mask",
    "normalize_image",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_mask",
]


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
