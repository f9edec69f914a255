"""Write the scenes of the QGIS tests; run by the venv's Python (QGIS's has no rasterio).

Usage: ``.venv/bin/python tests/qgis_suite/make_scenes.py OUT_DIR``. Prints a JSON manifest with
the paths and, for the small pair, the planted change polygons as WKT in the pair's CRS
(EPSG:32633).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scenes import BASE_CRS, default_extent, make_pair  # noqa: E402


def main(out: Path) -> dict[str, object]:
    small = make_pair(out / "small")
    # The same ground texture far to the east: its footprint does not touch the small pair's.
    xmin, ymin, xmax, ymax = default_extent()
    far_extent = (xmin + 50_000.0, ymin, xmax + 50_000.0, ymax)
    far = make_pair(out / "far", extent=far_extent, changes=[])
    # Large enough (2048 x 2048 px, 4096 tiles of 32 px: seconds of work) to cancel mid-run.
    large = make_pair(out / "large", extent=default_extent(20_480.0))
    return {
        "crs": BASE_CRS,
        "before": str(small.before),
        "after": str(small.after),
        "changes_wkt": [polygon.wkt for polygon in small.changes],
        "far_after": str(far.after),
        "large_before": str(large.before),
        "large_after": str(large.after),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
