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

import rasterio  # noqa: E402
from scenes import BASE_CRS, default_extent, make_pair  # noqa: E402

from mtrs_geo.sample import copy_sample  # noqa: E402


def split_bands(image: Path) -> list[str]:
    """Write each band of ``image`` to its own single-band GeoTIFF (as Sentinel-2 ships them)."""
    paths = []
    with rasterio.open(image) as source:
        profile = source.profile | {"count": 1}
        for band in range(1, source.count + 1):
            path = image.with_name(f"{image.stem}_B{band}.tif")
            with rasterio.open(path, "w", **profile) as target:
                target.write(source.read(band), 1)
            paths.append(str(path))
    return paths


def main(out: Path) -> dict[str, object]:
    small = make_pair(out / "small")
    # The same ground texture far to the east: its footprint does not touch the small pair's.
    xmin, ymin, xmax, ymax = default_extent()
    far_extent = (xmin + 50_000.0, ymin, xmax + 50_000.0, ymax)
    far = make_pair(out / "far", extent=far_extent, changes=[])
    # Large enough (2048 x 2048 px, 4096 tiles of 32 px: seconds of work) to cancel mid-run.
    large = make_pair(out / "large", extent=default_extent(20_480.0))
    # 6-band Landsat 7 with band descriptions, copied: QGIS writes .aux.xml files beside rasters.
    sample_before, sample_after = copy_sample(out / "sample")
    return {
        "crs": BASE_CRS,
        "before": str(small.before),
        "after": str(small.after),
        "changes_wkt": [polygon.wkt for polygon in small.changes],
        "far_after": str(far.after),
        "large_before": str(large.before),
        "large_after": str(large.after),
        "before_bands": split_bands(small.before),
        "after_bands": split_bands(small.after),
        "sample_before": str(sample_before),
        "sample_after": str(sample_after),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
