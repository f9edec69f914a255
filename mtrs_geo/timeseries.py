"""More than two dates: a time series compared interval by interval on one common grid.

``mtrs detect D1 D2 ... Dn`` compares each consecutive pair ``(D1, D2), (D2, D3), ...`` on the grid
the first pair would use, cut to the footprint every image covers, so that the polygons of all
intervals line up pixel for pixel. Each polygon carries ``from_date`` and ``to_date``, the interval
in which the change happened (a change seen in several intervals is one polygon per interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtrs_geo.aoi import AreaOfInterest
from mtrs_geo.dates import acquisition_date, goes_back_in_time, parse_date
from mtrs_geo.errors import InputError
from mtrs_geo.grid import Grid, common_grid, footprint_in


def series_grid(
    grids: Sequence[Grid], crs: str | None = None, resolution: float | None = None
) -> Grid:
    """Return the one grid every image of a series is compared on.

    It is the first pair's common grid (:func:`mtrs_geo.grid.common_grid`: the first image's
    lattice, or the ``crs``/``resolution`` asked for), cut on its lattice to the footprint of every
    later image.

    Raises:
        InputError: fewer than two images, or an image that does not overlap the others.

    """
    if len(grids) < 2:
        raise InputError(f"a time series needs at least two images, got {len(grids)}")
    grid = common_grid(grids[0], grids[1], crs=crs, resolution=resolution)
    for index, image in enumerate(grids[2:], start=3):
        left, bottom, right, top = footprint_in(image, grid.crs)
        g_left, g_bottom, g_right, g_top = grid.bounds
        overlap = (max(left, g_left), max(bottom, g_bottom), min(right, g_right), min(top, g_top))
        if overlap[2] <= overlap[0] or overlap[3] <= overlap[1]:
            raise InputError(f"image {index} does not overlap the area the earlier images share")
        try:
            grid = AreaOfInterest(overlap).crop(grid)
        except InputError:
            raise InputError(
                f"image {index} overlaps the area the earlier images share by less than a pixel"
            ) from None
    return grid


def series_dates(images: Sequence[Path | str], dates: Sequence[str] = ()) -> list[str]:
    """Return the acquisition date of every image (ISO 8601, ``""`` when unknown).

    Args:
        images: the images, in time order.
        dates: the dates the user gave, one per image; empty: read from the images' tags
            (:func:`mtrs_geo.dates.acquisition_date`).

    Raises:
        InputError: a date that is not one, a count that does not match, or known dates that are
            not in time order.

    """
    if dates:
        if len(dates) != len(images):
            raise InputError(f"{len(dates)} dates for {len(images)} images: give one per image")
        found = [parse_date(date, f"image {i}") for i, date in enumerate(dates, start=1)]
    else:
        found = [acquisition_date(image) or "" for image in images]
    check_time_order(found)
    return found


def check_time_order(dates: Sequence[str]) -> None:
    """Refuse known dates (ISO 8601; ``""`` unknown) that go back in time.

    Every date is checked against every earlier one (:func:`mtrs_geo.dates.goes_back_in_time`),
    not only its neighbour: ``2001-06-01, 2001, 2001-03-01`` goes back in time.

    Raises:
        InputError: a date earlier than a date before it.

    """
    known = [(index, date) for index, date in enumerate(dates, start=1) if date]
    for position, (j, later) in enumerate(known):
        for i, earlier in known[:position]:
            if goes_back_in_time(earlier, later):
                raise InputError(
                    f"the images must be in time order: image {j} ({later}) is dated before "
                    f"image {i} ({earlier})"
                )


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


def ordinal(number: int) -> str:
    """``1`` -> "first", ..., ``9`` -> "ninth", then ``10`` -> "10th", ``21`` -> "21st"."""
    if 1 <= number <= len(_ORDINALS):
        return _ORDINALS[number - 1]
    teens = 10 <= number % 100 <= 20
    suffix = "th" if teens else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def image_roles(count: int) -> list[str]:
    """Return what messages call each of ``count`` images: before, after; or first, second..."""
    if count == 2:
        return ["before", "after"]
    return [ordinal(number) for number in range(1, count + 1)]


def interval_label(from_date: str, to_date: str, before: str, after: str) -> str:
    """Name an interval for a band description: its dates, else its file names."""
    return f"{from_date or before} to {to_date or after}"


# The generated series: the real 2000 and 2003 scenes and a made-up middle date.
SERIES_SAMPLE_DATES = ("2000-03-17", "2001-08-27", "2003-02-06")
SERIES_SAMPLE_NAMES = ("taizhou_2000.tif", "taizhou_2001_generated.tif", "taizhou_2003.tif")


def write_series_sample(folder: Path | str) -> tuple[Path, Path, Path]:
    """Write a three-date time series, generated from the bundled Taizhou pair, into ``folder``.

    No public time series of three or more georeferenced dates is at hand, so the middle date is
    generated: the first and last images are the real Landsat 7 scenes of 2000-03-17 and
    2003-02-06 (:mod:`mtrs_geo.sample`); the middle one, dated 2001-08-27 (made up), holds the
    2003 pixels west of the scene's middle column and the 2000 pixels east of it. The western
    changes therefore happen in the first interval and the eastern ones in the second. Dates are
    written as ``ACQUISITIONDATETIME`` tags, each file under a temporary name first; the pair's
    SOURCE.md (origin, licence, citation) is copied beside them.

    Returns:
        The three GeoTIFFs, in time order.

    """
    import shutil

    import rasterio

    from mtrs_geo.sample import sample_folder, sample_pair
    from mtrs_geo.write import atomic_output

    folder = sample_folder(folder)
    first, last = sample_pair()
    with rasterio.open(first) as early, rasterio.open(last) as late:
        profile = early.profile
        pixels = (early.read(), late.read())
        descriptions = early.descriptions
    middle = pixels[0].copy()
    west = middle.shape[-1] // 2
    middle[..., :west] = pixels[1][..., :west]
    paths = tuple(folder / name for name in SERIES_SAMPLE_NAMES)
    images = (pixels[0], middle, pixels[1])
    for path, values, date in zip(paths, images, SERIES_SAMPLE_DATES, strict=True):
        with atomic_output(path) as partial, rasterio.open(partial, "w", **profile) as out:
            out.write(np.ascontiguousarray(values))
            out.update_tags(ACQUISITIONDATETIME=date)
            if path.name.endswith("_generated.tif"):
                out.update_tags(GENERATED="2003 pixels west of the middle column, 2000 east")
            for band, text in enumerate(descriptions, start=1):
                if text:
                    out.set_band_description(band, text)
    # The licence and the citation travel with the pixels.
    with atomic_output(folder / "SOURCE.md") as partial:
        shutil.copyfile(first.parent / "SOURCE.md", partial)
    return paths[0], paths[1], paths[2]
