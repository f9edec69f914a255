"""Content keys of training and evaluated items, so that data is recognised wherever it lies.

A checkpoint's record (:mod:`mtrs_geo.models.training.record`) names the folders it was trained
on, as they lay on the training machine. The same files copied or mounted elsewhere have other
paths; their *fingerprints* are the same:

- :func:`file_fingerprint`: a file's size and the SHA-256 of its first and last 64 KiB (cheap on
  a multi-gigabyte GeoTIFF, and distinct for distinct images in practice);
- :func:`item_file`: the file that stands for an item: a pair's before image, or an OSCD city
  folder's before red band (``imgs_1/*B04.tif``, read whatever bands the copy keeps);
- :func:`item_fingerprint`: the two together.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mtrs_geo.layouts import is_oscd_city

SAMPLE_BYTES = 1 << 16  # read from each end of a file
OSCD_KEY_BAND = "B04"  # the band every OSCD reader takes (red)


def file_fingerprint(path: Path | str) -> str | None:
    """Return the content key of a file, or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(SAMPLE_BYTES)
            handle.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            tail = handle.read(SAMPLE_BYTES)
    except OSError:
        return None
    digest = hashlib.sha256(f"{size}\0".encode() + head + tail)
    return digest.hexdigest()[:32]


def item_file(path: Path | str) -> Path | None:
    """Return the file that stands for an item: the file itself, or an OSCD city's red band."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not is_oscd_city(path):
        return None
    bands = sorted((path / "imgs_1").glob(f"*{OSCD_KEY_BAND}.tif"))
    return bands[0] if bands else None


def item_fingerprint(path: Path | str) -> str | None:
    """Return the content key of an item (:func:`item_file`), or None when it has none."""
    found = item_file(path)
    return None if found is None else file_fingerprint(found)
