"""Builders of tiny datasets in every layout the loaders read; the values are hand-checkable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(seed: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def square_mask(size: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    """0/255 uint8 mask with one lit square."""
    mask = np.zeros(size, dtype=np.uint8)
    mask[top : top + side, left : left + side] = 255
    return mask


def make_mtrefseg(root: Path, split: str = "val", size: tuple[int, int] = (32, 32)) -> Path:
    """An MTRefSeg-21K-shaped split with three JSONs and four samples.

    - ``p0.json``: two expressions, one mask each: ``masks/p0_0.png`` (a 8x8 square at 4,4) and
      ``masks/p0_1.png`` (all zero: an empty mask);
    - ``p1.json``: one expression, mask a 4x4 square at 0,0 (bare file names in the JSON);
    - ``p2.json``: one expression with ``"mask": []`` (empty, no file).
    """
    folder = root / split
    for index in range(3):
        _save(_rgb(index, size), folder / "A" / f"p{index}.png")
        _save(_rgb(100 + index, size), folder / "B" / f"p{index}.png")
    _save(square_mask(size, 4, 4, 8), folder / "masks" / "p0_0.png")
    _save(np.zeros(size, dtype=np.uint8), folder / "masks" / "p0_1.png")
    _save(square_mask(size, 0, 0, 4), folder / "masks" / "p1_0.png")
    metas = {
        "p0": {
            "img_A": "A/p0.png",
            "img_B": "B/p0.png",
            "referring_expressions": ["new buildings", "demolished roads"],
            "mask": [{"path": "masks/p0_0.png"}, {"path": "masks/p0_1.png"}],
        },
        "p1": {
            "img_A": "p1.png",
            "img_B": "p1.png",
            "referring_expressions": ["a new pool"],
            "mask": [{"path": "p1_0.png"}],
        },
        "p2": {
            "img_A": "A/p2.png",
            "img_B": "B/p2.png",
            "referring_expressions": ["vanished trees"],
            "mask": [],
        },
    }
    (folder / "referring_expression").mkdir(parents=True, exist_ok=True)
    for stem, meta in metas.items():
        (folder / "referring_expression" / f"{stem}.json").write_text(json.dumps(meta))
    return folder


def make_change_folder(
    root: Path, count: int = 3, size: tuple[int, int] = (32, 32), seed: int = 0
) -> Path:
    """An ``A/ B/ label/`` change-detection folder; pair ``c1`` has an all-zero label.

    Folders made with the same ``seed`` hold the same images.
    """
    for index in range(count):
        name = f"c{index}.png"
        _save(_rgb(10 + index + 100 * seed, size), root / "A" / name)
        _save(_rgb(20 + index + 100 * seed, size), root / "B" / name)
        label = np.zeros(size, np.uint8) if index == 1 else square_mask(size, 2, 2, 6 + index)
        _save(label, root / "label" / name)
    return root
