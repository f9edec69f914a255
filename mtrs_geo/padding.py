"""The one padding policy of a tile before a model: mirrored, the edge pixel repeated.

A tile is padded at its bottom and right only, so its pixels keep their coordinates and the
prediction is cropped back with ``[:height, :width]``. The mirror is numpy's ``symmetric`` mode
(``a b c | c b a | a b c ...``), repeated as often as needed, so a tile of any size (even one pixel)
reaches any size. The engine pads short edge tiles to the tile size with it
(:mod:`mtrs_geo.tiling`, padding marked invalid) and MTRefSeg-R1 pads its input to a multiple of
its coarsest stride with it: a tile is padded the same way wherever it is padded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def mirror_indices(size: int, length: int) -> np.ndarray:
    """Source index of each of ``length`` positions of an axis of ``size`` mirror-padded at its end.

    ``mirror_indices(3, 8)`` is ``[0, 1, 2, 2, 1, 0, 0, 1]``: the axis itself, then its mirror.
    """
    position = np.arange(length) % (2 * size)
    return np.where(position < size, position, 2 * size - 1 - position)


def pad_tile(tile: ArrayT, height: int, width: int) -> ArrayT:
    """Mirror-pad the last two axes of ``tile`` at the bottom and right to ``(height, width)``.

    Args:
        tile: ``(..., h, w)`` numpy array or torch tensor, ``h <= height`` and ``w <= width``.
        height: padded height, pixels.
        width: padded width, pixels.

    Returns:
        ``tile`` itself when it already has that size, else a new array (tensor on its device).

    """
    rows_in, cols_in = int(tile.shape[-2]), int(tile.shape[-1])
    if (rows_in, cols_in) == (height, width):
        return tile
    if rows_in > height or cols_in > width:
        raise ValueError(f"cannot pad a {rows_in} x {cols_in} tile to {height} x {width}")
    rows, cols = mirror_indices(rows_in, height), mirror_indices(cols_in, width)
    if isinstance(tile, np.ndarray):
        # One axis at a time: as fast as np.pad, several times faster than a 2-D gather.
        return np.take(np.take(tile, rows, axis=-2), cols, axis=-1)
    import torch

    rows_t, cols_t = (torch.from_numpy(i).to(tile.device) for i in (rows, cols))
    return tile[..., rows_t[:, None], cols_t]
