"""Georeferenced benchmark scenes: a before/after GeoTIFF pair plus change polygons with a query.

:class:`GeoScenePairDataset` is a torchgeo :class:`~torchgeo.datasets.GeoDataset` over the footprint
the two images share, on the before image's grid, so torchgeo's samplers (``RandomGeoSampler``
for training, ``GridGeoSampler`` for evaluation) draw chips from it. Each chip reads both dates
through a ``WarpedVRT`` onto the chip's grid, stretches them with scene-wide statistics (as the
engine does) and rasterizes the reference polygons of the chip's query on the fly (the polygons
are read and burnt by :mod:`mtrs_geo.layouts`, as for every scene reader).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from torch.utils.data import DataLoader
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

from mtrs_geo.errors import InputError
from mtrs_geo.layouts import rasterize_changes, read_change_polygons
from mtrs_geo.models.data.sample import Sample, Transform, make_sample
from mtrs_geo.normalize import BandStats, band_stats, percentile_stretch

STATS_SIZE = 1024  # longest side of the decimated read used for scene statistics, pixels


def _scene_stats(path: Path, bands: tuple[int, ...]) -> BandStats:
    """Percentile statistics of a whole image from a decimated read (nodata left out)."""
    with rasterio.open(path) as src:
        scale = max(1.0, max(src.width, src.height) / STATS_SIZE)
        shape = (len(bands), max(1, int(src.height / scale)), max(1, int(src.width / scale)))
        data = src.read(list(bands), out_shape=shape, resampling=Resampling.nearest, masked=True)
    valid = np.asarray(~np.ma.getmaskarray(data).any(axis=0))
    return band_stats(np.ma.getdata(data).astype(np.float32), valid)


class GeoScenePairDataset(GeoDataset):
    """Chips of a georeferenced pair with labels rasterized from reference polygons.

    Args:
        before: the earlier raster (its CRS and pixel size define the grid).
        after: the later raster (any CRS; warped onto the chip grid).
        labels: change polygons in any OGR format.
        text_field: attribute holding each polygon's query; ``None``: every polygon is a change and
            the chip's text is "" (stage-1 any-change).
        query: keep only polygons whose ``text_field`` equals this (case-insensitive); ``None``:
            each chip takes one of the scene's queries, chosen by a stable hash of its position.
        bands: 1-based band indexes read from both images (default: the first three).
        transform: applied to each item dict.

    """

    def __init__(
        self,
        before: Path,
        after: Path,
        labels: Path,
        text_field: str | None = "query",
        query: str | None = None,
        bands: tuple[int, ...] = (1, 2, 3),
        transform: Transform | None = None,
    ) -> None:
        self.before, self.after, self.labels_path = Path(before), Path(after), Path(labels)
        self.bands = bands
        self.transform = transform
        for path in (self.before, self.after, self.labels_path):
            if not path.exists():
                raise InputError(f"file not found: {path}")
        with rasterio.open(self.before) as src:
            if src.crs is None:
                raise InputError(f"{self.before} has no CRS: a georeferenced scene is needed")
            crs = src.crs
            self._res = (abs(src.transform.a), abs(src.transform.e))
            before_box = shapely.box(*src.bounds)
            count_before = src.count
        with rasterio.open(self.after) as src:
            if src.crs is None:
                raise InputError(f"{self.after} has no CRS: a georeferenced scene is needed")
            after_box = shapely.box(*transform_bounds(src.crs, crs, *src.bounds))
            count_after = src.count
        if max(bands) > min(count_before, count_after):
            raise InputError(f"band {max(bands)} asked for, the pair has {count_before} bands")
        footprint = before_box.intersection(after_box)
        if footprint.is_empty:
            raise InputError(f"{self.before.name} and {self.after.name} do not overlap")
        self.index = gpd.GeoDataFrame(
            {"filepath": [str(self.before)]},
            index=pd.IntervalIndex.from_tuples(
                [(pd.Timestamp.min, pd.Timestamp.max)], closed="both", name="datetime"
            ),
            geometry=[footprint],
            crs=crs,
        )
        polygons = read_change_polygons(self.labels_path, crs)
        if text_field is not None:
            if text_field not in polygons.columns:
                raise InputError(
                    f"{self.labels_path.name} has no attribute {text_field!r} "
                    f"(attributes: {', '.join(c for c in polygons.columns if c != 'geometry')})"
                )
            polygons["_text"] = polygons[text_field].astype(str).str.strip()
            if query is not None:
                polygons = polygons[polygons["_text"].str.lower() == query.strip().lower()].copy()
                polygons["_text"] = query.strip()
                self.queries = [query.strip()]
            else:
                self.queries = sorted(set(polygons["_text"]))
        else:
            polygons["_text"] = ""
            self.queries = [""]
        if not self.queries:
            raise InputError(f"{self.labels_path.name} holds no polygon")
        self.polygons = polygons
        self.stats = (_scene_stats(self.before, bands), _scene_stats(self.after, bands))

    def chip_query(self, xmin: float, ymin: float) -> str:
        """Return the query of the chip at this corner (stable across runs and workers)."""
        key = zlib.crc32(f"{xmin:.3f},{ymin:.3f}".encode())
        return self.queries[key % len(self.queries)]

    def _read(self, path: Path, transform: Any, width: int, height: int) -> np.ndarray:
        with rasterio.open(path) as src:
            with WarpedVRT(
                src,
                crs=self.index.crs,
                transform=transform,
                width=width,
                height=height,
                resampling=Resampling.bilinear,
            ) as vrt:
                return vrt.read(list(self.bands)).astype(np.float32)

    def __getitem__(self, query: Any) -> Sample:
        """Read the chip at a ``[xmin:xmax, ymin:ymax, tmin:tmax]`` slice (CRS units)."""
        x, y, _ = self._disambiguate_slice(query)
        xres, yres = self._res
        width = max(1, round((x.stop - x.start) / xres))
        height = max(1, round((y.stop - y.start) / yres))
        grid = from_origin(x.start, y.stop, xres, yres)
        before = percentile_stretch(self._read(self.before, grid, width, height), self.stats[0])
        after = percentile_stretch(self._read(self.after, grid, width, height), self.stats[1])
        text = self.chip_query(x.start, y.start)
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        chosen = self.polygons[self.polygons["_text"] == text] if text else self.polygons
        mask = rasterize_changes(chosen.geometry.intersection(box), (height, width), grid)
        sample = make_sample(
            before,
            after,
            mask.astype(np.float32),
            sample_id=f"{self.before.stem}_{x.start:.1f}_{y.start:.1f}",
            text=text,
            normalize=False,
            image_a_path=str(self.before),
            image_b_path=str(self.after),
            mask_path=str(self.labels_path),
        )
        sample["bounds"] = (x.start, y.start, x.stop, y.stop)
        return self.transform(sample) if self.transform is not None else sample


def geo_chip_loader(
    dataset: GeoScenePairDataset,
    size: int,
    batch_size: int,
    length: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader[Sample]:
    """Return a loader of ``size`` x ``size`` pixel chips drawn with a torchgeo sampler.

    ``stride`` given: a :class:`GridGeoSampler` (every chip once, for evaluation); otherwise a
    :class:`RandomGeoSampler` of ``length`` chips seeded with ``seed``.
    """
    import torch

    from mtrs_geo.models.augment import collate_samples

    sampler: GridGeoSampler | RandomGeoSampler
    if stride is not None:
        sampler = GridGeoSampler(dataset, size=size, stride=stride)
    else:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomGeoSampler(dataset, size=size, length=length, generator=generator)
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        sampler=sampler,  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples,
    )
