"""Generated change scenes with known classes for the CRAFT tests.

Every changed object is an axis-aligned rectangle whose transition, place and size are chosen so the
expected expressions are known in advance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {0: "no change", 1: "farmland", 2: "building", 3: "water", 4: "forest"}
COLOURS = {
    1: (180, 160, 90),
    2: (200, 200, 210),
    3: (30, 60, 160),
    4: (30, 110, 40),
}


@dataclass(frozen=True)
class Box:
    """A changed rectangle: rows [top, top+height), cols [left, left+width), from -> to class."""

    top: int
    left: int
    height: int
    width: int
    from_value: int
    to_value: int

    @property
    def transition(self) -> str:
        return f"{CLASSES[self.from_value]}->{CLASSES[self.to_value]}"


# 144 x 144 pixels: cells are 48 px wide; every centroid sits well inside its cell.
SEMANTIC_SCENES: dict[str, list[Box]] = {
    "alpha_0000": [
        Box(8, 8, 30, 30, 1, 2),  # large new building, north-west / top-left
        Box(10, 108, 16, 16, 1, 2),  # small new building, top-right
        Box(100, 100, 30, 12, 1, 2),  # medium new building, bottom-right
        Box(60, 60, 20, 20, 2, 1),  # a building demolished to farmland, centre
    ],
    "alpha_0144": [
        Box(100, 10, 28, 28, 3, 1),  # water turned into farmland, bottom-left
        Box(8, 58, 24, 24, 1, 2),  # new building, top
    ],
    "beta_0000": [
        Box(56, 8, 32, 32, 4, 1),  # forest cleared to farmland, left
        Box(56, 104, 20, 20, 4, 1),  # forest cleared to farmland, right
    ],
    "gamma_0000": [
        Box(104, 56, 26, 26, 1, 3),  # farmland flooded, bottom
    ],
}


def _texture(seed: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(-12, 13, (*shape, 3))


def _paint(base: np.ndarray, boxes: list[Box], attr: str, noise: np.ndarray) -> np.ndarray:
    image = base.copy()
    for box in boxes:
        value = getattr(box, attr)
        rows = slice(box.top, box.top + box.height)
        cols = slice(box.left, box.left + box.width)
        image[rows, cols] = np.asarray(COLOURS[value]) + noise[rows, cols]
    return np.clip(image, 0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_semantic(root: Path, size: int = 144) -> dict[str, list[Box]]:
    """Write a SECOND-style folder (im1/ im2/ label1/ label2/ classes.json); return its boxes."""
    for stem, boxes in SEMANTIC_SCENES.items():
        seed = sum(map(ord, stem))
        noise = _texture(seed, (size, size))
        background = np.clip(np.asarray(COLOURS[1]) + noise, 0, 255).astype(np.uint8)
        _save(_paint(background, boxes, "from_value", noise), root / "im1" / f"{stem}.png")
        _save(_paint(background, boxes, "to_value", noise), root / "im2" / f"{stem}.png")
        label1 = np.zeros((size, size), dtype=np.uint8)
        label2 = np.zeros((size, size), dtype=np.uint8)
        for box in boxes:
            rows = slice(box.top, box.top + box.height)
            cols = slice(box.left, box.left + box.width)
            label1[rows, cols] = box.from_value
            label2[rows, cols] = box.to_value
        _save(label1, root / "label1" / f"{stem}.png")
        _save(label2, root / "label2" / f"{stem}.png")
    (root / "classes.json").write_text(json.dumps({str(k): v for k, v in CLASSES.items()}))
    return SEMANTIC_SCENES


def box_mask(boxes: list[Box], size: int, transition: str | None = None) -> np.ndarray:
    """The union of the boxes (of one transition) as a boolean mask."""
    mask = np.zeros((size, size), dtype=bool)
    for box in boxes:
        if transition is None or box.transition == transition:
            mask[box.top : box.top + box.height, box.left : box.left + box.width] = True
    return mask


def make_georeferenced_scene(root: Path, name: str = "valley", nodata_box: bool = False) -> Path:
    """Write a ``scenes`` folder: UTM before/after GeoTIFFs (R, G, B, NIR) and change polygons.

    Polygons are in EPSG:4326 (the reader must reproject them). Forest cleared for buildings in the
    north-west loses vegetation; farmland turned into a lake in the south-east. With ``nodata_box``
    a third polygon lies where both rasters have no data.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box as shapely_box

    folder = root / name
    folder.mkdir(parents=True)
    size = 150
    transform = from_origin(500000.0, 5000000.0, 10.0, 10.0)  # EPSG:32633, 10 m pixels
    rng = np.random.default_rng(7)
    red = 800 + rng.integers(-50, 50, (size, size))
    nir = 3000 + rng.integers(-100, 100, (size, size))  # vegetated everywhere
    before = np.stack([red, red + 100, red - 100, nir]).astype(np.uint16)
    after = before.copy()
    after[:, 10:40, 10:40] = np.array([2500, 2500, 2500, 2600])[:, None, None]  # bright roofs
    after[:, 110:140, 100:140] = np.array([300, 400, 500, 200])[:, None, None]  # dark water
    if nodata_box:
        before[:, 60:90, :20] = 0
        after[:, 60:90, :20] = 0
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 4,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": transform,
        "nodata": 0,
    }
    for stem, data in (("before", before), ("after", after)):
        with rasterio.open(folder / f"{stem}.tif", "w", **profile) as dst:
            dst.write(data)

    def geo_box(top: int, left: int, bottom: int, right: int) -> object:
        x0, y0 = transform @ (left, bottom)
        x1, y1 = transform @ (right, top)
        return shapely_box(x0, y0, x1, y1)

    rows = [
        {"from_class": "forest", "to_class": "building", "geometry": geo_box(10, 10, 40, 40)},
        {"from_class": "farmland", "to_class": "water", "geometry": geo_box(110, 100, 140, 140)},
    ]
    if nodata_box:
        rows.append(
            {"from_class": "farmland", "to_class": "building", "geometry": geo_box(62, 0, 88, 18)}
        )
    frame = gpd.GeoDataFrame(rows, crs="EPSG:32633").to_crs("EPSG:4326")
    frame.to_file(folder / "changes.gpkg", driver="GPKG")
    return folder
