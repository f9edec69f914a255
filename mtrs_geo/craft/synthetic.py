"""Synthetic object-level changes over real imagery: pairs with exact masks per class and direction.

The idea (single-temporal supervised learning, object-level change synthesis; written here from
scratch): take one real image as the ground of both dates, then make things appear and disappear
in it by transplanting real objects cut out by real masks (roofs from building-change labels, water
from flood labels, vegetation patches found by a vegetation index) or drawn procedurally (roofs with
a ridge and a shadow, water bodies). An object pasted only into the after image *appeared*, one
pasted only into the before image *disappeared* (the after image shows the real ground around it),
one pasted into both is a distractor that did not change, and a roof whose after image is burnt
rubble was *destroyed*. Every paste is photometrically matched to the ground and blended with a
soft edge, and each date gets its own radiometric jitter, so the model cannot find changes by
looking for seams or a global colour shift.

Each generated pair is a :class:`~mtrs_geo.craft.sources.ChangePair` whose transitions carry the
class and the direction (``Transition(subject="building", direction="appeared")``), so CRAFT's
referents and grammar write expressions for class, direction, place, size, count and no-target
("new water" when only roofs appeared) with exact masks.

All functions are pure: arrays and a ``numpy.random.Generator`` in, arrays out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from mtrs_geo.craft.perception import Transition
from mtrs_geo.craft.sources import ChangePair

CLASSES = ("building", "water", "vegetation")
DIRECTIONS = ("appeared", "disappeared")
# Share of generated changes per class, and how often a roof is burnt instead of removed.
CLASS_WEIGHTS = {"building": 0.55, "water": 0.2, "vegetation": 0.25}
DESTROYED_SHARE = 0.35
ROOF_COLOURS = np.array(
    [
        [172, 82, 62],  # red tiles
        [150, 100, 80],  # brown tiles
        [128, 130, 136],  # grey concrete
        [205, 205, 200],  # light membrane
        [90, 100, 118],  # blue-grey metal
        [226, 222, 210],  # white
        [70, 72, 76],  # dark asphalt
        [180, 160, 130],  # sand
    ],
    dtype=np.float32,
)
WATER_COLOURS = np.array(
    [[40, 60, 80], [55, 75, 70], [70, 80, 95], [30, 45, 55], [95, 100, 85]], dtype=np.float32
)


@dataclass(frozen=True)
class Cutout:
    """One object to transplant.

    Attributes:
        cls: its class (one of :data:`CLASSES`).
        rgb: ``(3, h, w)`` float32 colours, 0-255.
        alpha: ``(h, w)`` float32 opacity in [0, 1] (soft edge); > 0.5 is the object's mask.
        source: the scene it was cut from ("procedural" for drawn ones).
        gsd: metres per pixel of the image it was cut from.

    """

    cls: str
    rgb: np.ndarray
    alpha: np.ndarray
    source: str
    gsd: float


@dataclass(frozen=True)
class SyntheticOptions:
    """How many changes a generated pair gets, and its pixel size.

    Attributes:
        max_changes: at most this many changed objects (at least one, unless ``empty_share``).
        max_static: at most this many unchanged distractor objects (present in both dates).
        empty_share: share of pairs without any change.
        gsd: metres per pixel of the ground images (sizes of drawn objects follow it).
        procedural_share: share of objects drawn instead of cut from real imagery.
        appearance_share: share of pairs that also get one to three unlabelled appearance
            changes (:func:`appearance_change`): a region whose colour shifts in one date, as
            water turning muddy, a field turning or a shadow moving, which no query refers to.

    """

    max_changes: int = 6
    max_static: int = 3
    empty_share: float = 0.08
    gsd: float = 0.5
    procedural_share: float = 0.35
    appearance_share: float = 0.0


def soft_alpha(mask: np.ndarray, sigma: float = 0.8) -> np.ndarray:
    """Feather a boolean mask into an opacity map that stays > 0.5 exactly on the mask."""
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    # Rescale so the mask's own border keeps >= 0.5 and the outside stays < 0.5.
    alpha = np.where(mask, np.maximum(blurred, 0.55), np.minimum(blurred, 0.45))
    return alpha.astype(np.float32)


def cutouts_from_mask(
    image: np.ndarray,
    mask: np.ndarray,
    cls: str,
    source: str,
    gsd: float,
    min_pixels: int = 30,
    max_share: float = 0.25,
) -> list[Cutout]:
    """Cut every connected object of ``mask`` out of ``image`` ``(3, H, W)`` uint8."""
    labels, count = ndimage.label(mask > 0)
    out: list[Cutout] = []
    limit = max_share * mask.size
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = box
        rows = slice(max(rows.start - 2, 0), min(rows.stop + 2, mask.shape[0]))
        cols = slice(max(cols.start - 2, 0), min(cols.stop + 2, mask.shape[1]))
        part = labels[rows, cols] == index
        pixels = int(part.sum())
        if pixels < min_pixels or pixels > limit:
            continue
        rgb = image[:, rows, cols].astype(np.float32)
        out.append(Cutout(cls, rgb, soft_alpha(part), source, gsd))
    return out


def vegetation_mask(image: np.ndarray, threshold: float = 0.06) -> np.ndarray:
    """Green vegetation of an RGB image ``(3, H, W)`` by the excess-green index, cleaned."""
    rgb = image.astype(np.float32)
    total = rgb.sum(0) + 1e-3
    excess_green = (2 * rgb[1] - rgb[0] - rgb[2]) / total
    mask = (excess_green > threshold) & (rgb[1] > 25)
    mask = ndimage.binary_opening(mask, iterations=1)
    return ndimage.binary_closing(mask, iterations=2)


def _blob(rng: np.random.Generator, height: int, width: int, smooth: float) -> np.ndarray:
    """Draw an irregular, roughly elliptic boolean blob filling most of ``height x width``."""
    noise = ndimage.gaussian_filter(rng.standard_normal((height, width)), smooth)
    noise /= noise.std() + 1e-6
    yy, xx = np.mgrid[0:height, 0:width]
    ellipse = ((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2
    field = 1.0 - ellipse + 0.35 * noise
    blob = field > 0.2
    labels, count = ndimage.label(blob)
    if count > 1:
        sizes = ndimage.sum(blob, labels, range(1, count + 1))
        blob = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(blob)


def procedural_roof(rng: np.random.Generator, gsd: float) -> Cutout:
    """Draw a roof seen from above: rectangle or L, one colour, a ridge line and fine texture."""
    long_m, short_m = rng.uniform(8, 32), rng.uniform(6, 16)
    height = max(int(round(long_m / gsd)), 6)
    width = max(int(round(short_m / gsd)), 5)
    if rng.random() < 0.5:
        height, width = width, height
    mask = np.ones((height, width), dtype=bool)
    if rng.random() < 0.3 and min(height, width) > 12:  # an L-shaped roof
        cut_h = int(height * rng.uniform(0.35, 0.6))
        cut_w = int(width * rng.uniform(0.35, 0.6))
        mask[:cut_h, :cut_w] = False
    colour = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    rgb = np.broadcast_to(colour[:, None, None], (3, height, width)).copy()
    # A ridge along the long side: one half lit, the other in shade.
    if rng.random() < 0.7:
        if height >= width:
            shade = np.where(np.arange(width) < width / 2, 1.12, 0.85)[None, None, :]
        else:
            shade = np.where(np.arange(height) < height / 2, 1.12, 0.85)[None, :, None]
        rgb = rgb * shade
    rgb += rng.normal(0, 4, size=rgb.shape)
    pad = 2
    padded = np.zeros((3, height + 2 * pad, width + 2 * pad), dtype=np.float32)
    padded[:, pad:-pad, pad:-pad] = rgb
    padded_mask = np.zeros((height + 2 * pad, width + 2 * pad), dtype=bool)
    padded_mask[pad:-pad, pad:-pad] = mask
    alpha = soft_alpha(padded_mask, 0.5)
    return Cutout("building", np.clip(padded, 0, 255).astype(np.float32), alpha, "procedural", gsd)


def procedural_water(rng: np.random.Generator, gsd: float) -> Cutout:
    """Draw a pond or flooded patch: an irregular blob of dark, smooth water."""
    side_m = rng.uniform(15, 70)
    height = max(int(side_m / min(gsd, 2.0) * rng.uniform(0.6, 1.0)), 10)
    width = max(int(side_m / min(gsd, 2.0) * rng.uniform(0.6, 1.0)), 10)
    height, width = min(height, 120), min(width, 120)
    mask = _blob(rng, height, width, smooth=max(height, width) / 8)
    colour = WATER_COLOURS[rng.integers(len(WATER_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    ripple = ndimage.gaussian_filter(rng.standard_normal((height, width)), 2.0) * 6
    rgb = colour[:, None, None] + ripple[None]
    return Cutout("water", rgb.astype(np.float32), soft_alpha(mask, 1.0), "procedural", gsd)


GROUND_PALETTES = np.array(
    [
        [[96, 118, 70], [140, 128, 96]],  # crops and bare soil
        [[70, 96, 60], [110, 130, 84]],  # pasture and woods
        [[150, 146, 138], [110, 108, 104]],  # paved and concrete
        [[168, 150, 120], [120, 100, 80]],  # dry ground
    ],
    dtype=np.float32,
)


def procedural_ground(rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw a plain ground image ``(3, size, size)`` uint8: smooth fields, field strips, grain."""
    low, high = GROUND_PALETTES[rng.integers(len(GROUND_PALETTES))]
    coarse = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(6, 25))
    coarse = (coarse - coarse.min()) / (np.ptp(coarse) + 1e-6)
    image = low[:, None, None] + (high - low)[:, None, None] * coarse[None]
    if rng.random() < 0.5:  # ploughed or cropped strips
        rows = np.arange(size)[:, None] * np.ones((1, size))
        period = rng.uniform(4, 14)
        image += 10 * np.sin(2 * np.pi * rows / period)[None] * rng.uniform(0.3, 1.0)
        image = np.ascontiguousarray(np.rot90(image, int(rng.integers(4)), axes=(1, 2)))
    image += rng.normal(0, rng.uniform(2, 6), size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def procedural(cls: str, rng: np.random.Generator, gsd: float) -> Cutout | None:
    """Draw an object of ``cls`` (None for classes that are only cut from real imagery)."""
    if cls == "building":
        return procedural_roof(rng, gsd)
    if cls == "water":
        return procedural_water(rng, gsd)
    return None


def _resample(cutout: Cutout, scale: float, turns: int, flip: bool) -> Cutout:
    rgb, alpha = cutout.rgb, cutout.alpha
    if abs(scale - 1.0) > 0.05:
        rgb = ndimage.zoom(rgb, (1, scale, scale), order=1)
        alpha = np.clip(ndimage.zoom(alpha, scale, order=1), 0, 1)
    if turns:
        rgb, alpha = np.rot90(rgb, turns, axes=(1, 2)), np.rot90(alpha, turns)
    if flip:
        rgb, alpha = rgb[:, :, ::-1], alpha[:, ::-1]
    return replace(cutout, rgb=np.ascontiguousarray(rgb), alpha=np.ascontiguousarray(alpha))


def match_colours(
    obj: np.ndarray, alpha: np.ndarray, ground: np.ndarray, strength: float
) -> np.ndarray:
    """Pull the object's mean colour part of the way towards the ground's (sensor and sun)."""
    weights = (alpha > 0.5).astype(np.float32)
    if weights.sum() < 1:
        return obj
    obj_mean = (obj * weights).sum((1, 2)) / weights.sum()
    ground_mean = ground.reshape(3, -1).mean(1)
    ratio = np.clip((ground_mean + 20) / (obj_mean + 20), 0.6, 1.6) ** strength
    return obj * ratio[:, None, None]


def paste(image: np.ndarray, cutout: Cutout, top: int, left: int) -> None:
    """Alpha-blend ``cutout`` into ``image`` ``(3, H, W)`` float at ``(top, left)`` in place."""
    h, w = cutout.alpha.shape
    region = image[:, top : top + h, left : left + w]
    alpha = cutout.alpha[None]
    region *= 1 - alpha
    region += alpha * cutout.rgb


def appearance_change(image: np.ndarray, rng: np.random.Generator) -> None:
    """Shift the colours of an irregular region of ``image`` ``(3, H, W)`` float, in place.

    The region (a tenth to half of the image's side, soft-edged) gets a gain and an offset, nearly
    the same in every channel: the same ground seen with other water, soil moisture or light.
    Nothing appeared or disappeared there, so it is not a change of any class.
    """
    height, width = image.shape[1:]
    h = int(height * rng.uniform(0.1, 0.5)) + 10
    w = int(width * rng.uniform(0.1, 0.5)) + 10
    blob = np.pad(_blob(rng, h - 6, w - 6, smooth=max(h, w) / 8), 3)
    alpha = ndimage.gaussian_filter(blob.astype(np.float32), 2.0)[None]
    top = int(rng.integers(0, max(height - h, 0) + 1))
    left = int(rng.integers(0, max(width - w, 0) + 1))
    region = image[:, top : top + h, left : left + w]
    alpha = alpha[:, : region.shape[1], : region.shape[2]]
    # Mostly brighter, little hue: a hue shift would draw vegetation, a dark patch water.
    gain = rng.uniform(0.85, 1.35) * rng.uniform(0.94, 1.06, 3)
    shifted = region * gain[:, None, None] + rng.uniform(-8, 25)
    region += alpha * (shifted - region)
    np.clip(region, 0, 255, out=region)


def rubble(cutout: Cutout, rng: np.random.Generator) -> Cutout:
    """Turn a roof into burnt remains: dark grey-brown speckled debris on its footprint."""
    h, w = cutout.alpha.shape
    base = np.array([62, 56, 50], dtype=np.float32) * rng.uniform(0.7, 1.5)
    speckle = rng.normal(0, 18, size=(1, h, w)) + rng.normal(0, 6, size=(3, h, w))
    ash = ndimage.gaussian_filter(rng.random((h, w)), 1.5)[None] * 60
    rgb = base[:, None, None] + speckle + ash
    return replace(cutout, rgb=np.clip(rgb, 0, 255).astype(np.float32))


def _place(
    occupied: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, margin: int
) -> tuple[int, int] | None:
    height, width = occupied.shape
    h, w = shape
    if h >= height - 2 or w >= width - 2:
        return None
    for _ in range(25):
        top = int(rng.integers(1, height - h - 1))
        left = int(rng.integers(1, width - w - 1))
        rows = slice(max(top - margin, 0), top + h + margin)
        cols = slice(max(left - margin, 0), left + w + margin)
        if not occupied[rows, cols].any():
            return top, left
    return None


def _jitter_date(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-date radiometry: channel gains, offset, haze, sometimes blur, sensor noise."""
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    offset = rng.uniform(-12, 12)
    out = image * gain[:, None, None] + offset
    if rng.random() < 0.25:
        out = ndimage.gaussian_filter(out, (0, 0.7, 0.7))
    out += rng.normal(0, rng.uniform(0.5, 3.0), size=out.shape)
    return np.clip(out, 0, 255)


# Roofs are not drawn on grounds coarser than this (metres per pixel): they would be a pixel or two.
MAX_BUILDING_GSD = 3.0


@dataclass(frozen=True)
class ObjectBank:
    """Cutouts per class, to draw from."""

    cutouts: dict[str, list[Cutout]]

    def classes(self, gsd: float) -> tuple[str, ...]:
        """Classes that can be generated on a ground of ``gsd`` metres per pixel."""
        fine = gsd <= MAX_BUILDING_GSD
        drawable = {"water"} | ({"building"} if fine else set())
        usable = {c for c in self.cutouts if self.cutouts[c] and (fine or c != "building")}
        return tuple(c for c in CLASSES if c in usable | drawable)

    def draw(self, cls: str, rng: np.random.Generator, options: SyntheticOptions) -> Cutout | None:
        """One object of ``cls`` at the ground's scale, randomly turned and flipped."""
        real = self.cutouts.get(cls) or []
        if not real or rng.random() < options.procedural_share:
            drawn = procedural(cls, rng, options.gsd)
            if drawn is not None:
                return _resample(drawn, float(rng.uniform(0.8, 1.2)), int(rng.integers(4)), False)
        for _ in range(6):  # real cutouts of a very different pixel size do not fit: try others
            drawn = real[int(rng.integers(len(real)))] if real else None
            if drawn is None:
                return None
            scale = drawn.gsd / options.gsd * float(rng.uniform(0.75, 1.3))
            if 4 <= scale * min(drawn.alpha.shape) and scale * max(drawn.alpha.shape) <= 160:
                turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
                return _resample(drawn, scale, turns, flip)
        return None


@dataclass(frozen=True)
class Ground:
    """A real image used as the unchanged ground of both dates.

    Attributes:
        scene: the scene it comes from (hold-out splits never separate a scene).
        image: ``(3, H, W)`` uint8 colours.
        gsd: metres per pixel.

    """

    scene: str
    image: np.ndarray
    gsd: float


def compose_pair(
    ground: Ground,
    bank: ObjectBank,
    rng: np.random.Generator,
    options: SyntheticOptions,
    name: str,
) -> ChangePair:
    """Make a before/after pair over one real ground image."""
    options = replace(options, gsd=ground.gsd)
    height, width = ground.image.shape[1:]
    before = ground.image.astype(np.float32).copy()
    after = before.copy()
    occupied = np.zeros((height, width), dtype=bool)
    instances = np.zeros((height, width), dtype=np.int32)
    codes: dict[tuple[str, str], int] = {}
    classes = bank.classes(options.gsd)
    weights = np.array([CLASS_WEIGHTS[c] for c in classes])
    weights /= weights.sum()
    changes = (
        0 if rng.random() < options.empty_share else int(rng.integers(1, options.max_changes + 1))
    )
    statics = int(rng.integers(0, options.max_static + 1))
    plan = [True] * changes + [False] * statics
    rng.shuffle(plan)
    for changed in plan:
        cls = classes[int(rng.choice(len(classes), p=weights))]
        cutout = bank.draw(cls, rng, options)
        if cutout is None:
            continue
        where = _place(occupied, cutout.alpha.shape, rng, margin=3)
        if where is None:
            continue
        top, left = where
        h, w = cutout.alpha.shape
        window = (slice(top, top + h), slice(left, left + w))
        cutout = replace(
            cutout,
            rgb=match_colours(cutout.rgb, cutout.alpha, before[:, window[0], window[1]], 0.5),
        )
        footprint = cutout.alpha > 0.5
        occupied[window] |= footprint
        if not changed:
            paste(before, cutout, top, left)
            paste(after, cutout, top, left)
            continue
        direction = DIRECTIONS[int(rng.integers(2))]
        if direction == "appeared":
            paste(after, cutout, top, left)
        else:
            paste(before, cutout, top, left)
            if cls == "building" and rng.random() < DESTROYED_SHARE:
                paste(after, rubble(cutout, rng), top, left)
        code = codes.setdefault((cls, direction), len(codes) + 1)
        instances[window][footprint] = code
    if options.appearance_share > 0 and rng.random() < options.appearance_share:
        for _ in range(int(rng.integers(1, 4))):
            appearance_change(after if rng.random() < 0.5 else before, rng)
    change = instances
    transitions = {
        code: Transition(subject=cls, direction=direction)
        for (cls, direction), code in codes.items()
    }
    return ChangePair(
        name=name,
        scene=ground.scene,
        rgb_before=_jitter_date(before, rng).round().astype(np.uint8),
        rgb_after=_jitter_date(after, rng).round().astype(np.uint8),
        red_nir_before=None,
        red_nir_after=None,
        change=change,
        transitions=transitions,
        # The ground is the same real image in both dates: nothing of any class changed except
        # what was generated, so a query about any other class or direction has no target.
        classes=CLASSES,
        valid=np.ones((height, width), dtype=bool),
        pixel_area_m2=np.full(height, options.gsd**2),
        georeferenced=bool(rng.random() < 0.5),
    )


def swap_dates(pair: ChangePair) -> ChangePair:
    """Reverse time: dates exchanged, every direction and class transition reversed."""
    flipped = {
        "appeared": "disappeared",
        "disappeared": "appeared",
    }
    transitions = {
        code: Transition(
            from_class=t.to_class,
            to_class=t.from_class,
            subject=t.subject,
            direction=flipped.get(t.direction or "", t.direction),
        )
        for code, t in pair.transitions.items()
    }
    return replace(
        pair,
        rgb_before=pair.rgb_after,
        rgb_after=pair.rgb_before,
        red_nir_before=pair.red_nir_after,
        red_nir_after=pair.red_nir_before,
        transitions=transitions,
    )


def synthetic_pairs(
    grounds: Sequence[Ground],
    bank: ObjectBank,
    count: int,
    seed: int,
    options: SyntheticOptions | None = None,
) -> Iterator[ChangePair]:
    """``count`` generated pairs over the given grounds, reproducible by ``seed``."""
    options = options or SyntheticOptions()
    for number in range(count):
        rng = np.random.default_rng((seed, number))
        ground = grounds[int(rng.integers(len(grounds)))]
        yield compose_pair(ground, bank, rng, options, f"synthetic_{number:06d}")
