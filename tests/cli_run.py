"""Run ``mtrs`` in-process through its real entry point (exit codes and error lines included)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import shapely

from mtrs_geo.cli.main import main


@dataclass(frozen=True)
class CliResult:
    """Exit code and captured output of one ``mtrs`` call."""

    code: int
    out: str
    err: str


def run_mtrs(*args: object) -> CliResult:
    """Call ``mtrs ARGS...`` like the console script does and capture what it prints."""
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def files_in(folder: Path) -> list[str]:
    """Names of everything in ``folder`` (hidden partial files included)."""
    return sorted(p.name for p in folder.iterdir())


def assert_changes_found_in_place(
    output: Path, changes: list[shapely.Geometry], base_crs: str, pixel_m: float
) -> gpd.GeoDataFrame:
    """Detected polygons lie within one pixel of the planted changes and cover most of each.

    Returns the detected polygons in ``base_crs``.
    """
    detected = gpd.read_file(output).to_crs(base_crs)
    assert len(detected) > 0
    found = shapely.union_all(detected.geometry.to_numpy())
    planted = shapely.union_all(changes)
    # Nothing farther than one ground pixel from a planted change: a misalignment of more than a
    # pixel would push the detected edges outside this band.
    stray = found.difference(planted.buffer(pixel_m, join_style="mitre"))
    assert stray.area <= 1e-6 * planted.area, f"{stray.area:.1f} m^2 detected off the changes"
    for change in changes:
        assert found.intersection(change).area >= 0.8 * change.area
    return detected
