"""Turn OSCD cities from ../shared/data into georeferenced scenes for ``mtrs evaluate``.

Each city becomes ``<out>/<city>/before.tif`` and ``after.tif`` (bands B04, B03, B02, uint16, the
10 m grid of the city's band files, EPSG:4326) and ``changes.gpkg``: the polygons of the OSCD change
map (value 2; the map is pixel-aligned with the 10 m bands) with a ``query`` attribute. The city is
read with :mod:`mtrs_geo.layouts`, as training and CRAFT read it. Scoring such
a folder runs the full engine (tiling, stitching) against the rasterized polygons::

    .venv/bin/python scripts/oscd_scenes.py runs/geo --city bordeaux
    mtrs benchmark runs/geo --split . --model cva --model mtrefseg-r1@any --out geo.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import shapes
from shapely.geometry import shape

from mtrs_geo.layouts import OSCD_DATES, OSCD_RGB, oscd_cities, read_oscd_bands, read_oscd_change

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd"
QUERY = "new buildings and roads"  # OSCD's changes are urban: new buildings and new roads


def write_scene(city: Path, out: Path) -> Path:
    """Write one city's scene folder; return it."""
    scene = out / city.name
    scene.mkdir(parents=True, exist_ok=True)
    profile: dict[str, object] = {}
    for date, name in zip(OSCD_DATES, ("before.tif", "after.tif"), strict=True):
        bands, transform, crs = read_oscd_bands(city / date, OSCD_RGB)
        profile = {
            "driver": "GTiff",
            "width": bands.shape[2],
            "height": bands.shape[1],
            "count": len(OSCD_RGB),
            "dtype": "uint16",
            "crs": crs,
            "transform": transform,
        }
        with rasterio.open(scene / name, "w", **profile) as dst:  # type: ignore[arg-type]
            dst.write(bands.astype(np.uint16))  # the bands' own uint16 values
    change = read_oscd_change(city).astype(np.uint8)
    polygons = [
        shape(geometry)
        for geometry, value in shapes(change, mask=change > 0, transform=profile["transform"])
        if value == 1
    ]
    gpd.GeoDataFrame(
        {"query": [QUERY] * len(polygons)}, geometry=polygons, crs=profile["crs"]
    ).to_file(scene / "changes.gpkg")
    return scene


def main() -> None:
    """Write the scenes of the cities asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--city", action="append", help="city name (repeatable; default: all)")
    args = parser.parse_args()
    cities = args.city or [city.name for city in oscd_cities(SHARED)]
    for name in cities:
        print(write_scene(SHARED / name, args.out))


if __name__ == "__main__":
    main()
