"""Build the QGIS plugin zip (Plugin Manager > Install from ZIP) from ``qgis_plugin/``.

The zip holds one folder, :data:`PLUGIN_FOLDER`, with the plugin's sources, metadata, icon and
styles only: no tests, caches, bytecode or build files. Standard library only (any Python 3)::

    python3 scripts/build_plugin.py                 # -> dist/mtrs_geo_plugin-<version>.zip
    python3 scripts/build_plugin.py --output DIR    # zip into DIR
    python3 scripts/build_plugin.py --stage DIR     # copy the plugin folder into DIR (for tests)
"""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "qgis_plugin"
PLUGIN_FOLDER = "mtrs_geo_plugin"  # the plugin's package name once installed
INCLUDED_SUFFIXES = {".py", ".txt", ".svg", ".png", ".qml", ".md"}
EXCLUDED_PARTS = {"__pycache__", "tests", "test", "build", "dist", ".pytest_cache", ".mypy_cache"}
# Fixed timestamp for zip entries, so the same sources give the same zip.
ZIP_DATE = (2024, 1, 1, 0, 0, 0)
# Every file and folder of the plugin, and the zip itself, readable by everyone (QGIS may run as
# another user than the one who built it).
FILE_MODE = 0o644
FOLDER_MODE = 0o755


def plugin_files(source: Path = SOURCE) -> list[Path]:
    """Files of the plugin, relative to ``source``, sorted: sources, metadata, icon, styles."""
    files: list[Path] = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or path.suffix not in INCLUDED_SUFFIXES:
            continue
        if any(part in EXCLUDED_PARTS or part.startswith(".") for part in relative.parts):
            continue
        if relative.name.startswith("test_") or relative.name == "conftest.py":
            continue
        files.append(relative)
    return files


def plugin_version(source: Path = SOURCE) -> str:
    """Return the ``version`` of ``metadata.txt``."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(source / "metadata.txt", encoding="utf-8")
    return parser.get("general", "version")


def stage_plugin(destination: Path, source: Path = SOURCE) -> Path:
    """Copy the plugin into ``destination/PLUGIN_FOLDER`` (replacing it) and return that folder."""
    target = destination / PLUGIN_FOLDER
    if target.exists():
        shutil.rmtree(target)
    for relative in plugin_files(source):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target / relative)
        os.chmod(target / relative, FILE_MODE)
    return target


def build_zip(output_dir: Path, source: Path = SOURCE) -> Path:
    """Write ``PLUGIN_FOLDER-<version>.zip`` into ``output_dir`` atomically and return its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{PLUGIN_FOLDER}-{plugin_version(source)}.zip"
    handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.", dir=output_dir)
    os.close(handle)
    try:
        files = plugin_files(source)
        folders = sorted({parent for path in files for parent in path.parents} - {Path(".")})
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for folder in [Path("."), *folders]:
                name = f"{PLUGIN_FOLDER}/{folder.as_posix()}/".replace("/./", "/")
                entry = zipfile.ZipInfo(name, ZIP_DATE)
                entry.create_system = 3  # Unix: the mode bits below are meaningful
                entry.external_attr = (0o040000 | FOLDER_MODE) << 16 | 0x10  # a folder
                archive.writestr(entry, b"")
            for relative in files:
                entry = zipfile.ZipInfo(f"{PLUGIN_FOLDER}/{relative.as_posix()}", ZIP_DATE)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.create_system = 3
                entry.external_attr = (0o100000 | FILE_MODE) << 16  # a regular file
                archive.writestr(entry, (source / relative).read_bytes())
        # mkstemp made the file private (0600); the zip is for others to install.
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, final)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return final


def main(argv: list[str] | None = None) -> int:
    """Command line: build the zip, or stage the folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "dist", help="folder for the zip")
    parser.add_argument("--stage", type=Path, help="copy the plugin folder here instead of zipping")
    parser.add_argument("--source", type=Path, default=SOURCE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.source / "metadata.txt").is_file():
        print(f"error: no metadata.txt in {args.source}", file=sys.stderr)
        return 2
    if args.stage is not None:
        print(stage_plugin(args.stage, args.source))
    else:
        print(build_zip(args.output, args.source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
