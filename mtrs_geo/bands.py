"""Default band choice: a 3-band model on a multispectral image reads its red, green and blue bands.

Pure choice from a raster's metadata (colour interpretation first, then band descriptions such as
"ETM+ B3 red"); :func:`default_bands` opens the file to read that metadata.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio

RGB = ("red", "green", "blue")
# A colour word on its own ("B3 red", "Red", "blue band"), not "near infrared" or "red edge".
_COLOUR_WORD = {colour: re.compile(rf"(?<![a-z]){colour}(?![a-z])") for colour in RGB}
_NOT_VISIBLE = re.compile(r"infra|edge|nir|swir")


@dataclass(frozen=True)
class BandChoice:
    """Bands picked for one image (1-based, red, green, blue) and how they were recognized."""

    bands: tuple[int, int, int]
    source: str  # "colour interpretation" or "band description"


def rgb_from_metadata(
    colour_interpretation: Sequence[str], descriptions: Sequence[str | None]
) -> BandChoice | None:
    """Find the red, green and blue bands from per-band metadata.

    Args:
        colour_interpretation: GDAL colour interpretation names per band ("red", "gray", ...).
        descriptions: band descriptions per band (None or "" when absent).

    Returns:
        The 1-based (red, green, blue) bands, or None when each colour is not exactly one band.

    """
    names = [str(name).lower() for name in colour_interpretation]
    if all(names.count(colour) == 1 for colour in RGB):
        bands = tuple(names.index(colour) + 1 for colour in RGB)
        return BandChoice((bands[0], bands[1], bands[2]), "colour interpretation")
    found: dict[str, list[int]] = {colour: [] for colour in RGB}
    for index, text in enumerate(descriptions, start=1):
        words = (text or "").lower()
        if _NOT_VISIBLE.search(words):
            continue
        for colour in RGB:
            if _COLOUR_WORD[colour].search(words):
                found[colour].append(index)
    if all(len(found[colour]) == 1 for colour in RGB):
        red, green, blue = (found[colour][0] for colour in RGB)
        return BandChoice((red, green, blue), "band description")
    return None


def default_bands(path: Path | str, needed: int | None) -> BandChoice | None:
    """Return the bands a model taking ``needed`` bands reads from ``path`` when none are chosen.

    Only a 3-band model on an image with another band count gets a choice: its red, green and
    blue bands when the file says which they are. None: use the image's bands as they are.
    """
    if needed != 3:
        return None
    try:
        with rasterio.open(path) as ds:
            if ds.count == 3:
                return None
            colours = [interp.name for interp in ds.colorinterp]
            descriptions = list(ds.descriptions)
    except Exception:  # not a local raster (a list, a STAC item): opening it says what is wrong
        return None
    return rgb_from_metadata(colours, descriptions)


def band_count(path: Path | str) -> int | None:
    """Return the number of bands of ``path``; None when it cannot be opened here."""
    try:
        with rasterio.open(path) as ds:
            return int(ds.count)
    except Exception:  # not a local raster (a list, a STAC item): opening it says what is wrong
        return None


def default_band_pair(
    paths: tuple[Path | str, Path | str], needed: int | None, roles: tuple[str, str]
) -> tuple[BandChoice | None, BandChoice | None]:
    """:func:`default_bands` of two images; one without colour metadata borrows the other's.

    Two images of one band layout (the same band count) where only one names its colours (an
    ENVI file beside a described GeoTIFF of the same sensor) read the same red, green and blue.
    """
    choices = [default_bands(path, needed) for path in paths]
    for this, other in ((0, 1), (1, 0)):
        found = choices[other]
        if choices[this] is None and found is not None:
            counts = band_count(paths[this]), band_count(paths[other])
            if counts[0] is not None and counts[0] != 3 and counts[0] == counts[1]:
                borrowed = f"the {roles[other]} image's {found.source}"
                choices[this] = BandChoice(found.bands, borrowed)
    return choices[0], choices[1]


def describe_choice(role: str, choice: BandChoice) -> str:
    """One line saying which bands of an image a run reads, and why."""
    bands = ", ".join(str(band) for band in choice.bands)
    return f"{role} image: bands {bands} (red, green, blue by {choice.source})"
