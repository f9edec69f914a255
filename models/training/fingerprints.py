"""Content keys of training and evaluated items, so that data is recognised wherever it lies.

A checkpoint's record (:mod:`mtrs_geo.models.training.record`) names the folders it was trained
on, as they lay on the training machine. The same files copied or mounted elsewhere have other
paths; their *fingerprints* are the same:

- :func:`file_fingerprint`: the SHA-256 of a file's size and content: all of it up to
  :data:`WHOLE_FILE_BYTES` (image chips), else :data:`SAMPLES` blocks spread from its first byte
  to its last (a multi-gigabyte GeoTIFF is read in 1 MiB);
- :func:`item_file`: the file that stands for one date of an item: a pair's image, or an OSCD city
  folder's red band of that date (``imgs_1/*B04.tif``, read whatever bands the copy keeps);
- :func:`item_fingerprint`: the two together.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from mtrs_geo.layouts import is_oscd_city

WHOLE_FILE_BYTES = 4 << 20  # files up to this size are hashed whole
SAMPLES = 16  # blocks read from a larger file, evenly spaced, the first and the last included
SAMPLE_BYTES = 1 << 16
OSCD_KEY_BAND = "B04"  # the band every OSCD reader takes (red)


def file_fingerprint(path: Path | str) -> str | None:
    """Return the content key of a regular file, or None (not one, or unreadable)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO would block, a device never end
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = hashlib.sha256(f"{size}\0".encode())
            if size <= WHOLE_FILE_BYTES:
                digest.update(handle.read())
            else:
                step = (size - SAMPLE_BYTES) // (SAMPLES - 1)
                for index in range(SAMPLES):
                    handle.seek(index * step)
                    digest.update(handle.read(SAMPLE_BYTES))
    except OSError:
        return None
    return digest.hexdigest()[:32]


def item_file(path: Path | str, date: str = "imgs_1") -> Path | None:
    """Return the file that stands for an item: the file itself, or an OSCD city's red band.

    ``date`` is the city's folder of that date (``imgs_1`` before, ``imgs_2`` after).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    if not is_oscd_city(path):
        return None
    bands = sorted((path / date).glob(f"*{OSCD_KEY_BAND}.tif"))
    return bands[0] if bands else None


def item_fingerprint(path: Path | str, date: str = "imgs_1") -> str | None:
    """Return the content key of an item (:func:`item_file`), or None when it has none."""
    found = item_file(path, date)
    return None if found is None else file_fingerprint(found)
