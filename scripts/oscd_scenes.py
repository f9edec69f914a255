"""Turn OSCD cities from ../shared/data into georeferenced scenes for ``mtrs evaluate``.

Each city becomes ``<out>/<city>/before.tif`` and ``after.tif`` (bands B04, B03, B02, uint16, the
10 m grid of the city's band files, EPSG:4326) and ``changes.gpkg``: the polygons of the OSCD change
map (value 2; the map is pixel-aligned with the 10 m bands) with a ``query`` attribute. Scoring such
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

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd"
BANDS = ("B04", "B03", "B02")
QUERY = "new buildings and roads"  # OSCD's changes are urban: new buildings and new roads


def _band(folder: Path, band: str) -> Path:
    return sorted(folder.glob(f"*{band}.tif"))[0]


def write_scene(city: Path, out: Path) -> Path:
    """Write one city's scene folder; return it."""
    scene = out / city.name
    scene.mkdir(parents=True, exist_ok=True)
    profile: dict[str, object] = {}
    for date, name in (("imgs_1", "before.tif"), ("imgs_2", "after.tif")):
        layers = []
        for band in BANDS:
            with rasterio.open(_band(city / date, band)) as src:
                layers.append(src.read(1))
                profile = {
                    "driver": "GTiff",
                    "width": src.width,
                    "height": src.height,
                    "count": len(BANDS),
                    "dtype": "uint16",
                    "crs": src.crs,
                    "transform": src.transform,
                }
        with rasterio.open(scene / name, "w", **profile) as dst:  # type: ignore[arg-type]
            dst.write(np.stack(layers).astype(np.uint16))
    with rasterio.open(sorted((city / "cm").glob("*-cm.tif"))[0]) as src:
        change = (src.read(1) == 2).astype(np.uint8)
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
    cities = args.city or sorted(p.name for p in SHARED.iterdir() if (p / "cm").is_dir())
    for name in cities:
        print(write_scene(SHARED / name, args.out))


if __name__ == "__main__":
    main()
