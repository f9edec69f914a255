"""Acquisition dates of the input rasters, written on every change polygon.

A date given by the user wins; otherwise it comes from the raster's tags: ``ACQUISITIONDATETIME``
(GDAL's IMAGERY metadata domain, or the default one), ``TIFFTAG_DATETIME``, then a bare
``ACQUISITION_YEAR``. Dates are ISO 8601 text: ``2003``, ``2003-05-17`` or ``2003-05-17T10:21:04``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import rasterio

from mtrs_geo.errors import InputError

# Tag names, most specific first, and the metadata domains they are looked up in.
_DATE_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "TIFFTAG_DATETIME")
_YEAR_TAGS = ("ACQUISITION_YEAR",)
_DOMAINS = ("IMAGERY", None)
_YEAR = re.compile(r"^\d{4}$")
# A day, or a day and a time (to the minute or finer) after "T" or a space, with an optional zone.
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$")


def parse_date(text: str, role: str = "image") -> str:
    """Return ``text`` as ISO 8601 (a year, a date, or a date and time to the second).

    Accepts ISO forms (``2003-05-17``, ``2003-05-17T10:21:04`` or with a space, with a ``Z`` or an
    offset, which is kept) and the TIFF form ``2003:05:17 10:21:04``.

    Raises:
        InputError: not a date.

    """
    value = text.strip()
    if _YEAR.match(value):
        return value
    tiff = re.match(r"^(\d{4}):(\d{2}):(\d{2})([ T].*)?$", value)
    if tiff:
        value = f"{tiff[1]}-{tiff[2]}-{tiff[3]}{(tiff[4] or '').replace(' ', 'T', 1)}"
    parsed = None
    if _ISO.match(value):  # Python's own parser takes any character between date and time
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None:
        raise InputError(
            f"{role} date {text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"
        )
    if len(value) <= 10:
        return parsed.date().isoformat()
    return parsed.replace(microsecond=0).isoformat()


def date_span(date: str) -> tuple[datetime, datetime]:
    """Return the times an ISO 8601 date of :func:`parse_date` may stand for: ``[start, end)``.

    A year spans its year, a day its day, a time its second. Times with an offset are aware (in
    their own offset); the others naive, in a zone not known.
    """
    if _YEAR.match(date):
        return datetime(int(date), 1, 1), datetime(int(date) + 1, 1, 1)
    parsed = datetime.fromisoformat(date)
    if len(date) <= 10:
        return parsed, parsed + timedelta(days=1)
    return parsed, parsed + timedelta(seconds=1)


def goes_back_in_time(earlier: str, later: str) -> bool:
    """Return True when the date ``later`` must be before ``earlier`` (:func:`parse_date`).

    Dates overlap at the coarser precision ("2001" and "2001-03-01" are in order either way);
    two times with offsets are compared as instants; otherwise offsets are left aside and the
    clock times compared, as a date without a zone can be in any.
    """
    start, _ = date_span(earlier)
    _, end = date_span(later)
    if (start.tzinfo is None) != (end.tzinfo is None):
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return end <= start


def acquisition_date(path: Path | str) -> str | None:
    """Return the acquisition date in a raster's tags (ISO 8601); None when it has none."""
    try:
        with rasterio.open(path) as ds:
            domains = [ds.tags(ns=domain) if domain else ds.tags() for domain in _DOMAINS]
    except Exception:  # not a local raster (a list, a STAC item): no date from its tags
        return None
    for names in (_DATE_TAGS, _YEAR_TAGS):
        for tags in domains:
            for name in names:
                text = tags.get(name)
                if not text:
                    continue
                try:
                    return parse_date(text)
                except InputError:
                    continue
    return None


def pair_dates(
    before: Path | str, after: Path | str, before_date: str | None, after_date: str | None
) -> dict[str, str]:
    """Return the ``before_date`` and ``after_date`` polygon attributes ("" when unknown)."""
    found = {
        "before_date": parse_date(before_date, "before")
        if before_date
        else acquisition_date(before),
        "after_date": parse_date(after_date, "after") if after_date else acquisition_date(after),
    }
    return {name: value or "" for name, value in found.items()}
