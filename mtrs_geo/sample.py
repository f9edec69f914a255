"""The bundled real sample pair: Landsat 7 ETM+ over Taizhou, China, 2000 and 2003 (see SOURCE.md).

It ships inside the package so ``make demo`` runs offline on a fresh machine.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from mtrs_geo.errors import InputError

SAMPLE_FILES = ("taizhou_2000.tif", "taizhou_2003.tif")
COPY_NAMES = ("before.tif", "after.tif")


def sample_pair() -> tuple[Path, Path]:
    """Paths of the bundled before (2000) and after (2003) GeoTIFFs inside the installed package."""
    folder = Path(str(resources.files("mtrs_geo.sample_data")))
    before, after = (folder / name for name in SAMPLE_FILES)
    for path in (before, after):
        if not path.is_file():
            raise InputError(f"the bundled sample {path.name} is missing from {folder}")
    return before, after


def copy_sample(dest_dir: Path | str) -> tuple[Path, Path]:
    """Copy the sample pair into ``dest_dir`` (created if needed) as before.tif and after.tif.

    Its SOURCE.md (origin, licence, citation) is copied beside them.

    Each file is copied under a temporary name and renamed, so an interrupted copy leaves no file
    that looks finished. Returns the two new paths.
    """
    dest = Path(dest_dir)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    before, after = sample_pair()
    copies = []
    # SOURCE.md travels with the pixels: it holds the licence and the citation.
    for source, name in (
        (before, COPY_NAMES[0]),
        (after, COPY_NAMES[1]),
        (before.parent / "SOURCE.md", "SOURCE.md"),
    ):
        target = dest / name
        partial = dest / f".{name}.partial"
        try:
            shutil.copyfile(source, partial)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        copies.append(target)
    return copies[0], copies[1]  # SOURCE.md is copied too but is not part of the pair
