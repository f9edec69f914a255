"""Grid-aware change perception: split a change map into instances and describe each one.

Everything here is pure: arrays in, frozen descriptions out. Sizes are in pixels unless a name says
metres; positions use a 3x3 grid of the image (row 0 = top).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 3x3 grid cells, (row, col) -> (compass word, image word)
CELL_WORDS: dict[tuple[int, int], tuple[str, str]] = {
    (0, 0): ("north-west", "top-left"),
    (0, 1): ("north", "top"),
    (0, 2): ("north-east", "top-right"),
    (1, 0): ("west", "left"),
    (1, 1): ("centre", "centre"),
    (1, 2): ("east", "right"),
    (2, 0): ("south-west", "bottom-left"),
    (2, 1): ("south", "bottom"),
    (2, 2): ("south-east", "bottom-right"),
}

# An instance whose centroid lies closer than this share of the image size to a cell border has no
# unambiguous cell: expressions that name a place leave such pairs out.
CELL_BORDER_MARGIN = 0.04
ELONGATED_RATIO = 3.0  # major/minor axis ratio above which a shape reads as "elongated"
IRREGULAR_FILL = 0.45  # pixel share of the bounding box below which a shape reads as "irregular"
BRIGHTNESS_STEP = 0.08  # change of mean stretched brightness (0..1) that reads as brighter/darker
NDVI_STEP = 0.10  # change of mean NDVI that reads as vegetation gain/loss
# Values within this share of a threshold are "borderline": an expression must not depend on them.
BORDERLINE = 0.25


@dataclass(frozen=True)
class Transition:
    """What changed: a class transition when known, else a subject noun with an optional direction.

    ``from_class``/``to_class`` are class names (None when unknown); ``subject`` is the noun for a
    binary change map (``"building"``); ``direction`` is ``"appeared"``, ``"disappeared"`` or None.
    """

    from_class: str | None = None
    to_class: str | None = None
    subject: str | None = None
    direction: str | None = None

    @property
    def key(self) -> str:
        """A short identifier, e.g. ``farmland->building`` or ``building``."""
        if self.from_class or self.to_class:
            return f"{self.from_class or '?'}->{self.to_class or '?'}"
        return self.subject or "change"


@dataclass(frozen=True)
class Instance:
    """One connected changed region and what it looks like.

    Attributes:
        id: 1-based label in the instance map.
        transition: the class transition or subject of the change.
        pixels: size in pixels.
        area_m2: ground area in square metres.
        centroid: (row, col) in pixels.
        cell: (row, col) of the 3x3 grid cell holding the centroid.
        near_cells: every cell within the border margin of the centroid (``cell`` included); more
            than one means the instance's place is ambiguous for those cells.
        shape: ``"compact"``, ``"elongated"`` or ``"irregular"``.
        shape_certain: False when the shape measures are near a threshold.
        brightness_change: mean after-minus-before stretched brightness, relative to unchanged
            pixels.
        ndvi_change: mean NDVI change, relative to unchanged pixels; None without a NIR band.

    """

    id: int
    transition: Transition
    pixels: int
    area_m2: float
    centroid: tuple[float, float]
    cell: tuple[int, int]
    near_cells: frozenset[tuple[int, int]]
    shape: str
    shape_certain: bool
    brightness_change: float
    ndvi_change: float | None

    @property
    def brightness(self) -> str | None:
        """``"brighter"``/``"darker"`` when the brightness change is clear, else None."""
        return _signed_word(self.brightness_change, BRIGHTNESS_STEP, "brighter", "darker")

    @property
    def brightness_certain(self) -> bool:
        """False when the brightness change is near the threshold."""
        return _certain(self.brightness_change, BRIGHTNESS_STEP)

    @property
    def vegetation(self) -> str | None:
        """``"gain"``/``"loss"`` of vegetation when the NDVI change is clear, else None."""
        if self.ndvi_change is None:
            return None
        return _signed_word(self.ndvi_change, NDVI_STEP, "gain", "loss")

    @property
    def vegetation_certain(self) -> bool:
        """False when the NDVI change is near the threshold (or there is no NIR band)."""
        return self.ndvi_change is not None and _certain(self.ndvi_change, NDVI_STEP)


def _signed_word(value: float, step: float, positive: str, negative: str) -> str | None:
    if value >= step:
        return positive
    if value <= -step:
        return negative
    return None


def _certain(value: float, step: float) -> bool:
    """Tell whether ``|value|`` is clearly above or clearly below ``step``."""
    magnitude = abs(value)
    return magnitude >= step * (1 + BORDERLINE) or magnitude <= step * (1 - BORDERLINE)


def label_instances(change: np.ndarray, min_pixels: int) -> tuple[np.ndarray, list[int]]:
    """Split a change map into 8-connected instances of one transition each.

    Args:
        change: ``(H, W)`` integer map, 0 = no change, k > 0 = transition code k.
        min_pixels: instances smaller than this are dropped (their pixels become 0).

    Returns:
        The ``(H, W)`` int32 instance map (0 = none, ids from 1 in raster order of first pixel) and,
        per instance id (index id - 1), its transition code.

    """
    change = np.asarray(change)
    instances = np.zeros(change.shape, dtype=np.int32)
    found: list[tuple[int, int, np.ndarray]] = []  # (first flat index, code, pixel indices)
    structure = np.ones((3, 3), dtype=bool)
    for code in np.unique(change):
        if code == 0:
            continue
        labels, count = ndimage.label(change == code, structure=structure)
        if count == 0:
            continue
        flat = labels.ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(1, count + 2))
        for k in range(count):
            pixels = order[bounds[k] : bounds[k + 1]]
            if pixels.size >= min_pixels:
                found.append((int(pixels.min()), int(code), pixels))
    found.sort(key=lambda item: item[0])
    codes: list[int] = []
    flat_out = instances.ravel()
    for new_id, (_, code, pixels) in enumerate(found, start=1):
        flat_out[pixels] = new_id
        codes.append(code)
    return instances, codes


def grid_cell(
    centroid: tuple[float, float], shape: tuple[int, int]
) -> tuple[tuple[int, int], frozenset[tuple[int, int]]]:
    """Return the 3x3 cell holding a (row, col) centroid, and every cell within the margin of it."""
    cell: list[int] = []
    options: list[set[int]] = []
    for value, size in zip(centroid, shape, strict=True):
        position = (value + 0.5) / size  # pixel centres, 0..1
        index = min(int(position * 3), 2)
        near = {index}
        for low in (position - CELL_BORDER_MARGIN, position + CELL_BORDER_MARGIN):
            near.add(min(max(int(low * 3), 0), 2))
        cell.append(index)
        options.append(near)
    near_cells = frozenset((r, c) for r in options[0] for c in options[1])
    return (cell[0], cell[1]), near_cells


def shape_of(rows: np.ndarray, cols: np.ndarray) -> tuple[str, bool]:
    """Classify the shape of a pixel set as compact, elongated or irregular, and how certain it is.

    Elongation is the ratio of the principal axes (square root of the covariance eigenvalues);
    fill is the pixel share of the axis-aligned bounding box.
    """
    if rows.size < 3:
        return "compact", False
    coords = np.stack([rows, cols]).astype(np.float64)
    cov = np.cov(coords) + np.eye(2) / 12.0  # a pixel's own extent keeps thin lines finite
    eigen = np.sort(np.linalg.eigvalsh(cov))
    elongation = float(np.sqrt(eigen[1] / eigen[0]))
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = rows.size / float(box)
    if elongation >= ELONGATED_RATIO:
        certain = elongation >= ELONGATED_RATIO * (1 + BORDERLINE)
        return "elongated", certain
    near_elongated = elongation > ELONGATED_RATIO * (1 - BORDERLINE)
    if fill < IRREGULAR_FILL:
        certain = fill < IRREGULAR_FILL * (1 - BORDERLINE) and not near_elongated
        return "irregular", certain
    certain = fill > IRREGULAR_FILL * (1 + BORDERLINE) and not near_elongated
    return "compact", certain


def brightness(rgb: np.ndarray) -> np.ndarray:
    """Mean of the stretched visible bands: ``(3, H, W)`` in [0, 1] -> ``(H, W)``."""
    return np.asarray(rgb, dtype=np.float32).mean(axis=0)


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Compute NDVI from raw red and near-infrared values (0 where both are 0)."""
    red = np.asarray(red, dtype=np.float64)
    nir = np.asarray(nir, dtype=np.float64)
    total = nir + red
    out = np.zeros(total.shape, dtype=np.float64)
    np.divide(nir - red, total, out=out, where=total > 0)
    return out.astype(np.float32)


def describe_instances(
    instances: np.ndarray,
    codes: list[int],
    transitions: dict[int, Transition],
    pixel_area_m2: np.ndarray,
    brightness_delta: np.ndarray,
    ndvi_delta: np.ndarray | None,
    valid: np.ndarray,
) -> list[Instance]:
    """Describe every instance of an instance map.

    Args:
        instances: ``(H, W)`` instance map from :func:`label_instances`.
        codes: transition code per instance (index id - 1).
        transitions: transition per code.
        pixel_area_m2: ``(H,)`` ground area of one pixel per row (square metres).
        brightness_delta: ``(H, W)`` after-minus-before stretched brightness.
        ndvi_delta: ``(H, W)`` after-minus-before NDVI, or None without a NIR band.
        valid: ``(H, W)`` pixels with data in both dates.

    """
    shape = instances.shape
    background = valid & (instances == 0)
    base_brightness = float(np.median(brightness_delta[background])) if background.any() else 0.0
    base_ndvi = 0.0
    if ndvi_delta is not None and background.any():
        base_ndvi = float(np.median(ndvi_delta[background]))
    described: list[Instance] = []
    slices = ndimage.find_objects(instances)
    for index, code in enumerate(codes):
        region = slices[index]
        if region is None:
            continue
        local = instances[region] == index + 1
        rows, cols = np.nonzero(local)
        rows = rows + region[0].start
        cols = cols + region[1].start
        centroid = (float(rows.mean()), float(cols.mean()))
        cell, near_cells = grid_cell(centroid, (shape[0], shape[1]))
        shape_word, shape_certain = shape_of(rows, cols)
        usable = valid[rows, cols]
        if usable.any():
            bright = float(brightness_delta[rows, cols][usable].mean()) - base_brightness
        else:
            bright = 0.0
        veg: float | None = None
        if ndvi_delta is not None:
            veg = float(ndvi_delta[rows, cols][usable].mean()) - base_ndvi if usable.any() else 0.0
        described.append(
            Instance(
                id=index + 1,
                transition=transitions[code],
                pixels=int(rows.size),
                area_m2=float(pixel_area_m2[rows].sum()),
                centroid=centroid,
                cell=cell,
                near_cells=near_cells,
                shape=shape_word,
                shape_certain=shape_certain,
                brightness_change=bright,
                ndvi_change=veg,
            )
        )
    return described
