"""The item dict every dataset returns, and the type of a per-item transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mtrs_geo.models.data.images import normalize_image, resize_image

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


def make_sample(
    image_a: np.ndarray,
    image_b: np.ndarray,
    mask: np.ndarray,
    sample_id: str,
    text: str = "",
    normalize: bool = True,
    **paths: str,
) -> Sample:
    """Build the item dict every dataset returns (before image fixes the grid)."""
    height, width = image_a.shape[-2:]
    if image_b.shape[-2:] != (height, width):
        image_b = resize_image(image_b, height, width)
    if normalize:
        image_a = normalize_image(image_a)
        image_b = normalize_image(image_b)
    sample: Sample = {
        "image_a": torch.from_numpy(np.ascontiguousarray(image_a, dtype=np.float32)),
        "image_b": torch.from_numpy(np.ascontiguousarray(image_b, dtype=np.float32)),
        "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)),
        "text": text,
        "sample_id": sample_id,
        "expression_index": 0,
        "json_path": "",
        "image_a_path": "",
        "image_b_path": "",
        "mask_path": "",
    }
    sample.update(paths)
    return sample
