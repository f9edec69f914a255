"""Readers of change data: each input layout becomes a stream of :class:`ChangePair` chips.

Layouts:

- ``levir-cd``: ``A/ B/ label/`` images, binary change 0/255 (LEVIR-CD, WHU-CD, ...); not
  georeferenced.
- ``semantic``: SECOND style, ``im1/ im2/ label1/ label2/`` (or ``A/ B/``) with a from-class and a
  to-class map per pixel (index or colour PNGs) and ``classes.json``; not georeferenced.
- ``oscd``: per-city Sentinel-2 folders ``imgs_1/ imgs_2/`` of per-band GeoTIFFs and ``cm/*-cm.tif``
  (1 = no change, 2 = change); georeferenced by the bands, near-infrared from B08.
- ``scenes``: one folder per scene with ``before.*`` and ``after.*`` georeferenced rasters and one
  vector file of change polygons (any OGR format) with optional from/to class attributes.
- ``synthetic``: a folder of donor data sets (``levir-cd/``, ``egy-bcd/``, ``ombria-s2/``, ...;
  see :mod:`mtrs_geo.craft.donors`): ``count`` object-level changes generated over their real
  images (:mod:`mtrs_geo.craft.synthetic`), with exact masks per class and direction.

Which files make a pair, and how they are read, is :mod:`mtrs_geo.layouts` (shared with training
and evaluation); this module turns them into chips.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from mtrs_geo.craft.perception import Transition
from mtrs_geo.errors import InputError
from mtrs_geo.layouts import (
    IMAGE_SUFFIXES,
    OSCD_RGB_NIR,
    VECTOR_SUFFIXES,
    find_label_dir,
    find_scene_files,
    folder_pairs,
    image_files,
    oscd_cities,
    rasterize_changes,
    read_change_polygons,
    read_oscd_bands,
    read_oscd_change,
    read_pixels,
)
from mtrs_geo.normalize import band_stats, percentile_stretch

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "VECTOR_SUFFIXES",
    "ChangePair",
    "SourceOptions",
    "chip_windows",
    "pixel_areas_m2",
    "read_class_table",
    "read_pairs",
    "scene_names",
    "scene_of",
]

LAYOUTS = ("levir-cd", "semantic", "oscd", "scenes", "synthetic")


@dataclass(frozen=True)
class ChangePair:
    """One before/after chip with its change labels, ready for perception.

    Attributes:
        name: unique file stem of the pair in the output.
        scene: the scene it comes from; splits never separate chips of one scene.
        rgb_before, rgb_after: ``(3, H, W)`` uint8 display images.
        red_nir_before, red_nir_after: ``(2, H, W)`` raw red and near-infrared values, or None.
        change: ``(H, W)`` int32 transition codes (0 = no change).
        transitions: transition per code.
        classes: class names known for the input (for expressions of transitions that did not
            happen).
        valid: ``(H, W)`` pixels with data in both dates.
        pixel_area_m2: ``(H,)`` ground area of one pixel per row, square metres.
        georeferenced: True when positions may use compass words (north-up georeferenced input).

    """

    name: str
    scene: str
    rgb_before: np.ndarray
    rgb_after: np.ndarray
    red_nir_before: np.ndarray | None
    red_nir_after: np.ndarray | None
    change: np.ndarray
    transitions: dict[int, Transition]
    classes: tuple[str, ...]
    valid: np.ndarray
    pixel_area_m2: np.ndarray
    georeferenced: bool


@dataclass(frozen=True)
class SourceOptions:
    """How to read an input.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        gsd: metres per pixel for inputs that are not georeferenced.
        chip_size: images larger than this (pixels) are cut into chips of at most this size.
        subject: noun of a binary change map (``"building"``).
        direction: ``"appeared"``, ``"disappeared"`` or None (unknown or mixed) for binary maps.
        from_field, to_field: attribute names of the from/to classes in a scene's change polygons.
        bands: 1-based red, green, blue band indexes of ``scenes`` rasters.
        nir_band: 1-based near-infrared band of ``scenes`` rasters, or None.
        count: number of generated pairs (``synthetic``).
        seed: seed of the generated pairs (``synthetic``).
        donors: which side of the donors' hold-out split feeds ``synthetic``: ``train``,
            ``held_out`` or ``all``.

    """

    layout: str
    gsd: float = 0.5
    chip_size: int = 512
    subject: str = "change"
    direction: str | None = None
    from_field: str = "from_class"
    to_field: str = "to_class"
    bands: tuple[int, int, int] = (1, 2, 3)
    nir_band: int | None = None
    count: int = 500
    seed: int = 0
    donors: str = "all"


def read_pairs(root: Path, options: SourceOptions) -> Iterator[ChangePair]:
    """Yield the chips of every pair under ``root`` in a stable (sorted) order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    if options.layout == "levir-cd":
        yield from _levir_pairs(root, options)
    elif options.layout == "semantic":
        yield from _semantic_pairs(root, options)
    elif options.layout == "oscd":
        yield from _oscd_pairs(root, options)
    elif options.layout == "scenes":
        yield from _scene_pairs(root, options)
    elif options.layout == "synthetic":
        yield from _synthetic_pairs(root, options)
    else:
        raise InputError(f"unknown layout {options.layout!r}; use one of {', '.join(LAYOUTS)}")


def chip_windows(height: int, width: int, chip: int) -> list[tuple[int, int, int, int]]:
    """Cut an image into near-equal chips of at most ``chip`` pixels a side: (row, col, h, w)."""
    if chip <= 0:
        return [(0, 0, height, width)]
    rows = _splits(height, chip)
    cols = _splits(width, chip)
    return [(r0, c0, rh, cw) for r0, rh in rows for c0, cw in cols]


def _splits(size: int, chip: int) -> list[tuple[int, int]]:
    count = max(1, math.ceil(size / chip))
    edges = [round(i * size / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(count)]


def scene_of(stem: str) -> str:
    """Return the scene of a crop name: trailing ``_NNNN`` offsets removed (``test_2_0512``)."""
    scene = re.sub(r"(_\d{4}){1,2}$", "", stem)
    return scene or stem


def _rgb(array: np.ndarray) -> np.ndarray:
    """Make an 8-bit display image ``(3, H, W)`` from a ``(H, W[, C])`` image array."""
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] < 3:
        array = np.repeat(array[..., :1], 3, axis=2)
    array = array[..., :3]
    if array.dtype != np.uint8:
        data = np.moveaxis(array, 2, 0).astype(np.float32)
        stretched = percentile_stretch(data, band_stats(data))
        return np.round(stretched * 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(array, 2, 0))


def _stretch_display(bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Percentile-stretch ``(3, H, W)`` raw bands to 8-bit, nodata -> 0."""
    stats = band_stats(bands, valid if valid.any() else None)
    out = np.round(percentile_stretch(bands, stats) * 255).astype(np.uint8)
    out[:, ~valid] = 0
    return out


def _binary_transitions(options: SourceOptions) -> dict[int, Transition]:
    return {1: Transition(subject=options.subject, direction=options.direction)}


def _levir_pairs(root: Path, options: SourceOptions) -> Iterator[ChangePair]:
    pairs, _ = folder_pairs(root)  # before images without a label are not pairs
    labels = image_files(find_label_dir(root) or root / "label")
    if not labels:
        raise InputError(f"{root}: no change masks in the label folder (levir-cd layout)")
    paired = {pair.label for pair in pairs}
    for label_path in labels.values():
        if label_path not in paired:
            raise InputError(f"{root}: label {label_path.name} has no matching A/ and B/ image")
    for pair in pairs:
        stem = pair.stem
        label = read_pixels(pair.label, what="label")
        if label.ndim == 3:
            label = label[..., :3].max(axis=2)
        change = (label > 0).astype(np.int32)
        rgb_a = _rgb(read_pixels(pair.before))
        rgb_b = _rgb(read_pixels(pair.after))
        _check_shapes(stem, rgb_a.shape[1:], rgb_b.shape[1:], change.shape)
        yield from _chips(
            stem,
            scene_of(stem),
            rgb_a,
            rgb_b,
            None,
            None,
            change,
            _binary_transitions(options),
            (),
            np.ones(change.shape, dtype=bool),
            np.full(change.shape[0], options.gsd**2),
            False,
            options.chip_size,
        )


def _check_shapes(stem: str, *shapes: tuple[int, ...]) -> None:
    if len({tuple(s) for s in shapes}) != 1:
        raise InputError(f"pair {stem}: before, after and label sizes differ: {list(shapes)}")


def read_class_table(path: Path) -> tuple[dict[int, str], dict[tuple[int, int, int], int]]:
    """Read ``classes.json``: ``{"0": "no change", "1": "water"}`` or a list of objects.

    A list holds ``{"value": int, "name": str, "color": [r, g, b]}`` entries (color optional, for
    RGB label images). Value 0 means no change.

    Returns:
        value -> name, and colour -> value for colour labels.

    """
    if not path.is_file():
        raise InputError(f"class table not found: {path} (semantic layout needs classes.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"cannot read class table {path}: {exc}") from exc
    names: dict[int, str] = {}
    colours: dict[tuple[int, int, int], int] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            names[int(key)] = str(value)
    elif isinstance(data, list):
        for entry in data:
            value = int(entry["value"])
            names[value] = str(entry["name"])
            if "color" in entry:
                r, g, b = (int(v) for v in entry["color"])
                colours[(r, g, b)] = value
    else:
        raise InputError(f"class table {path}: expected an object or a list")
    return names, colours


def _class_map(
    path: Path, colours: dict[tuple[int, int, int], int], names: dict[int, str]
) -> np.ndarray:
    array = read_pixels(path, what="class map")
    if array.ndim == 3:
        if not colours:
            raise InputError(f"{path.name} is a colour image but classes.json gives no colours")
        rgb = array[..., :3].astype(np.int64)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(packed.shape, -1, dtype=np.int64)
        for (r, g, b), value in colours.items():
            out[packed == ((r << 16) | (g << 8) | b)] = value
        if (out < 0).any():
            raise InputError(f"{path.name}: colours not in classes.json")
        return out.astype(np.int32)
    values = array.astype(np.int32)
    unknown = set(np.unique(values).tolist()) - set(names) - {0}
    if unknown:
        raise InputError(f"{path.name}: class values {sorted(unknown)} not in classes.json")
    return values


def _semantic_pairs(root: Path, options: SourceOptions) -> Iterator[ChangePair]:
    names, colours = read_class_table(root / "classes.json")
    before = image_files(root / "im1") or image_files(root / "A")
    after = image_files(root / "im2") or image_files(root / "B")
    from_maps, to_maps = image_files(root / "label1"), image_files(root / "label2")
    if not from_maps:
        raise InputError(f"{root}: no label1/ folder (semantic layout: im1/ im2/ label1/ label2/)")
    class_names = tuple(names[v] for v in sorted(names) if v != 0)
    for stem, from_path in from_maps.items():
        if stem not in to_maps or stem not in before or stem not in after:
            raise InputError(
                f"{root}: {from_path.name} has no matching label2/, im1/ and im2/ files"
            )
        from_map = _class_map(from_path, colours, names)
        to_map = _class_map(to_maps[stem], colours, names)
        rgb_a = _rgb(read_pixels(before[stem]))
        rgb_b = _rgb(read_pixels(after[stem]))
        _check_shapes(stem, rgb_a.shape[1:], rgb_b.shape[1:], from_map.shape, to_map.shape)
        changed = (from_map != 0) & (to_map != 0) & (from_map != to_map)
        pairs = sorted(
            {(int(a), int(b)) for a, b in zip(from_map[changed], to_map[changed], strict=True)}
        )
        change = np.zeros(from_map.shape, dtype=np.int32)
        transitions: dict[int, Transition] = {}
        for code, (a, b) in enumerate(pairs, start=1):
            change[changed & (from_map == a) & (to_map == b)] = code
            transitions[code] = Transition(from_class=names[a], to_class=names[b])
        yield from _chips(
            stem,
            scene_of(stem),
            rgb_a,
            rgb_b,
            None,
            None,
            change,
            transitions,
            class_names,
            np.ones(change.shape, dtype=bool),
            np.full(len(change), options.gsd**2),
            False,
            options.chip_size,
        )


def _chips(
    stem: str,
    scene: str,
    rgb_a: np.ndarray,
    rgb_b: np.ndarray,
    rn_a: np.ndarray | None,
    rn_b: np.ndarray | None,
    change: np.ndarray,
    transitions: dict[int, Transition],
    classes: tuple[str, ...],
    valid: np.ndarray,
    pixel_area: np.ndarray,
    georeferenced: bool,
    chip_size: int,
) -> Iterator[ChangePair]:
    height, width = change.shape
    windows = chip_windows(height, width, chip_size)
    for r0, c0, h, w in windows:
        rows, cols = slice(r0, r0 + h), slice(c0, c0 + w)
        name = stem if len(windows) == 1 else f"{stem}_r{r0}_c{c0}"
        yield ChangePair(
            name=name,
            scene=scene,
            rgb_before=np.ascontiguousarray(rgb_a[:, rows, cols]),
            rgb_after=np.ascontiguousarray(rgb_b[:, rows, cols]),
            red_nir_before=None if rn_a is None else np.ascontiguousarray(rn_a[:, rows, cols]),
            red_nir_after=None if rn_b is None else np.ascontiguousarray(rn_b[:, rows, cols]),
            change=np.ascontiguousarray(change[rows, cols]),
            transitions=transitions,
            classes=classes,
            valid=np.ascontiguousarray(valid[rows, cols]),
            pixel_area_m2=pixel_area[rows],
            georeferenced=georeferenced,
        )


def pixel_areas_m2(transform: Affine, crs: object, height: int, row_offset: int = 0) -> np.ndarray:
    """Measure the ground area of one pixel per row (square metres) of a raster grid.

    Each row's first pixel goes through the engine's :func:`mtrs_geo.areas.ground_areas` (a local
    equal-area projection), so geographic grids get true areas that shrink towards the poles.
    """
    import geopandas as gpd
    from shapely.geometry import Polygon

    from mtrs_geo.areas import ground_areas

    boxes = []
    for i in range(height):
        r = row_offset + i
        corners = [(0, r), (1, r), (1, r + 1), (0, r + 1)]
        boxes.append(Polygon([transform @ corner for corner in corners]))
    return np.asarray(ground_areas(gpd.GeoDataFrame(geometry=boxes, crs=crs)), dtype=np.float64)


def _north_up(transform: Affine) -> bool:
    return transform.b == 0 and transform.d == 0 and transform.e < 0


def _oscd_pairs(root: Path, options: SourceOptions) -> Iterator[ChangePair]:
    cities = oscd_cities(root)
    if not cities:
        raise InputError(f"{root}: no city folder with cm/ and imgs_1/ (oscd layout)")
    for city in cities:
        change = read_oscd_change(city)
        # red, green, blue and near-infrared: display from the first three, NDVI from 0 and 3
        before, transform, crs = read_oscd_bands(city / "imgs_1", OSCD_RGB_NIR)
        after, _, _ = read_oscd_bands(city / "imgs_2", OSCD_RGB_NIR)
        _check_shapes(city.name, before.shape[1:], after.shape[1:], change.shape)
        if crs is None:
            raise InputError(f"{city.name}: bands have no CRS")
        valid = np.asarray((before > 0).all(axis=0) & (after > 0).all(axis=0))
        yield from _chips(
            city.name,
            city.name,
            _stretch_display(before[:3], valid),
            _stretch_display(after[:3], valid),
            before[[0, 3]],
            after[[0, 3]],
            change.astype(np.int32),
            _binary_transitions(options),
            (),
            valid,
            pixel_areas_m2(transform, crs, change.shape[0]),
            _north_up(transform),
            options.chip_size,
        )


def _scene_pairs(root: Path, options: SourceOptions) -> Iterator[ChangePair]:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(
            f"{root}: no scene folders (scenes layout: <scene>/before.tif after.tif …)"
        )
    for folder in folders:
        before_path, after_path, vector_path = find_scene_files(folder)
        polygons = read_change_polygons(vector_path)
        with rasterio.open(before_path) as src_a, rasterio.open(after_path) as src_b:
            if src_a.crs is None:
                raise InputError(
                    f"{before_path} has no CRS (scenes layout needs georeferenced rasters)"
                )
            indexes = list(options.bands) + ([options.nir_band] if options.nir_band else [])
            for src in (src_a, src_b):
                if max(indexes) > src.count:
                    raise InputError(
                        f"{src.name}: has {src.count} bands, asked for band {max(indexes)}"
                    )
            polygons = polygons.to_crs(src_a.crs)
            transitions, codes = _polygon_codes(polygons, options)
            vrt = WarpedVRT(
                src_b,
                crs=src_a.crs,
                transform=src_a.transform,
                width=src_a.width,
                height=src_a.height,
                resampling=Resampling.bilinear,
            )
            with vrt:
                areas = pixel_areas_m2(src_a.transform, src_a.crs, src_a.height)
                windows = chip_windows(src_a.height, src_a.width, options.chip_size)
                for r0, c0, h, w in windows:
                    window = Window(c0, r0, w, h)
                    data_a = src_a.read(indexes, window=window).astype(np.float32)
                    data_b = vrt.read(indexes, window=window).astype(np.float32)
                    valid = (src_a.read_masks(1, window=window) > 0) & (
                        vrt.read_masks(1, window=window) > 0
                    )
                    change = rasterize_changes(
                        polygons.geometry,
                        (h, w),
                        window_transform(window, src_a.transform),
                        codes,
                        dtype="int32",
                    )
                    name = folder.name if len(windows) == 1 else f"{folder.name}_r{r0}_c{c0}"
                    has_nir = options.nir_band is not None
                    yield ChangePair(
                        name=name,
                        scene=folder.name,
                        rgb_before=_stretch_display(data_a[:3], valid),
                        rgb_after=_stretch_display(data_b[:3], valid),
                        red_nir_before=data_a[[0, 3]] if has_nir else None,
                        red_nir_after=data_b[[0, 3]] if has_nir else None,
                        change=change,
                        transitions=transitions,
                        classes=_scene_classes(transitions),
                        valid=valid,
                        pixel_area_m2=areas[r0 : r0 + h],
                        georeferenced=_north_up(src_a.transform),
                    )


def _polygon_codes(
    polygons: object, options: SourceOptions
) -> tuple[dict[int, Transition], list[int]]:
    """Code every distinct (from, to) class pair of the polygons; binary without class fields."""
    columns = set(getattr(polygons, "columns", []))
    has_from, has_to = options.from_field in columns, options.to_field in columns
    rows = len(polygons)  # type: ignore[arg-type]
    if not (has_from or has_to):
        return _binary_transitions(options), [1] * rows

    def clean(value: object) -> str | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        text = str(value).strip()
        return text or None

    pairs = [
        (
            clean(polygons[options.from_field].iloc[i]) if has_from else None,  # type: ignore[index]
            clean(polygons[options.to_field].iloc[i]) if has_to else None,  # type: ignore[index]
        )
        for i in range(rows)
    ]
    ordered = sorted(set(pairs), key=lambda p: (p[0] or "", p[1] or ""))
    code_of = {pair: code for code, pair in enumerate(ordered, start=1)}
    transitions = {code: Transition(from_class=a, to_class=b) for (a, b), code in code_of.items()}
    return transitions, [code_of[p] for p in pairs]


def _scene_classes(transitions: dict[int, Transition]) -> tuple[str, ...]:
    names = {t.from_class for t in transitions.values()} | {
        t.to_class for t in transitions.values()
    }
    return tuple(sorted(n for n in names if n))


def scene_names(root: Path, options: SourceOptions) -> list[str]:
    """List the sorted scene names of an input from file names only (no image is read)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    if options.layout == "levir-cd":
        stems = list(image_files(find_label_dir(root) or root / "label"))
    elif options.layout == "semantic":
        stems = list(image_files(root / "label1"))
    elif options.layout == "oscd":
        return [city.name for city in oscd_cities(root)]
    elif options.layout == "scenes":
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    elif options.layout == "synthetic":
        return sorted({pair.scene for pair in _synthetic_pairs(root, options)})
    else:
        raise InputError(f"unknown layout {options.layout!r}; use one of {', '.join(LAYOUTS)}")
    return sorted({scene_of(stem) for stem in stems})


def _synthetic_pairs(root: Path, options: SourceOptions) -> Iterator[ChangePair]:
    from mtrs_geo.craft.donors import SPLITS, load_donors
    from mtrs_geo.craft.synthetic import Ground, ObjectBank, synthetic_pairs

    sides = SPLITS if options.donors == "all" else (options.donors,)
    if any(side not in SPLITS for side in sides):
        raise InputError(f"donors must be one of {', '.join((*SPLITS, 'all'))}")
    grounds: list[Ground] = []
    cutouts: dict[str, list] = {}  # type: ignore[type-arg]
    for side in sides:
        donors = load_donors(root, side)
        grounds += donors.grounds
        for cls, items in donors.bank.cutouts.items():
            cutouts.setdefault(cls, []).extend(items)
    if not grounds:
        raise InputError(
            f"{root}: no donor folder found (levir-cd/, egy-bcd/, ombria-s2/, sztaki-airchange/, "
            "dsifn-cd/ or oscd/)"
        )
    yield from synthetic_pairs(grounds, ObjectBank(cutouts), options.count, options.seed)
