"""The bundled real sample pair: Landsat 7 ETM+ over Taizhou, China, 2000 and 2003 (see SOURCE.md).

It ships inside the package so ``make demo`` runs offline on a fresh machine.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from mtrs_geo.errors import InputError, OutputError

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


def sample_folder(dest_dir: Path | str) -> Path:
    """Return ``dest_dir``, created if needed, for a sample to be written into.

    Raises:
        InputError: ``dest_dir`` exists and is not a folder.
        OutputError: it cannot be created (no permission, a read-only file system, ...).

    """
    dest = Path(dest_dir)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} exists and is not a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {dest}: {exc.strerror or exc}") from exc
    return dest


def copy_sample(dest_dir: Path | str) -> tuple[Path, Path]:
    """Copy the sample pair into ``dest_dir`` (created if needed) as before.tif and after.tif.

    Its SOURCE.md (origin, licence, citation) is copied beside them.

    Each file is copied under a temporary name and renamed, so an interrupted copy leaves no file
    that looks finished. Returns the two new paths.
    """
    from mtrs_geo.write import atomic_output

    dest = sample_folder(dest_dir)
    before, after = sample_pair()
    copies = []
    # SOURCE.md travels with the pixels: it holds the licence and the citation.
    for source, name in (
        (before, COPY_NAMES[0]),
        (after, COPY_NAMES[1]),
        (before.parent / "SOURCE.md", "SOURCE.md"),
    ):
        with atomic_output(dest / name) as partial:
            shutil.copyfile(source, partial)
        copies.append(dest / name)
    return copies[0], copies[1]  # SOURCE.md is copied too but is not part of the pair
