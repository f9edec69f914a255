"""Scene-wide samples: each image's normalization statistics, and the model calibrated on them.

Statistics never come from a full-scene read: from the image's overviews when it has them,
otherwise from a seeded sample of windows of the common grid. The same windows of both images,
normalized with those statistics, are what a model calibrates on before tiling starts
(:meth:`mtrs_geo.model_api.ChangeModel.calibrate`). One process and a cluster's setup task both
read and calibrate through :func:`read_scene_samples` and :func:`calibrate_on_samples`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window, from_bounds

from mtrs_geo.align import AlignedReader
from mtrs_geo.errors import InputError
from mtrs_geo.grid import Grid, footprint_in, grid_offset, same_lattice, sample_windows
from mtrs_geo.model_api import ChangeModel
from mtrs_geo.normalize import BandStats, band_stats
from mtrs_geo.read import RasterInfo, read_failure
from mtrs_geo.tiling import prepare_tile_into

# Windows of the common grid read for statistics and calibration: how many, their side in pixels
# (at most the tile size), the seed that places them.
SAMPLE_WINDOWS = 24
SAMPLE_SIZE = 256
SAMPLE_SEED = 0
# Largest side, in pixels, of the overview read used for statistics.
STATS_OVERVIEW_SIZE = 1024

Samples = list[tuple[np.ndarray, np.ndarray]]  # (data (C, h, w) own dtype, valid (h, w)) each


@dataclass(frozen=True)
class SceneSamples:
    """The sample windows read from both images (own dtypes), and each image's statistics."""

    before: Samples
    after: Samples
    stats: tuple[BandStats, BandStats]  # before, after


def read_scene_samples(
    before: RasterInfo, after: RasterInfo, grid: Grid, tile_size: int
) -> SceneSamples:
    """Read the sample windows of ``grid`` from both images, the before image's in a second thread.

    Windows are :data:`SAMPLE_SIZE` pixels (at most ``tile_size``). When the before image is read
    on the grid's lattice, each seeded window lies inside one of its file blocks where blocks are
    large enough (one block decoded per window). Each thread opens its own dataset handles; GDAL
    decodes without the GIL, so the two images' sample reads overlap.
    """
    block, origin = (1, 1), (0, 0)
    if same_lattice(before.grid, grid):
        col, row = grid_offset(before.grid, grid)  # the grid's first pixel in the image
        block = before.block_shape
        origin = (-row % block[0], -col % block[1])
    size = min(SAMPLE_SIZE, tile_size)
    windows = sample_windows(
        grid.width, grid.height, size, SAMPLE_WINDOWS, SAMPLE_SEED, block, origin
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtrs-samples") as pool:
        future = pool.submit(_image_samples, before, grid, windows)
        samples_a, stats_a = _image_samples(after, grid, windows)
        samples_b, stats_b = future.result()
    return SceneSamples(samples_b, samples_a, (stats_b, stats_a))


def _image_samples(
    info: RasterInfo, grid: Grid, windows: list[Window]
) -> tuple[Samples, BandStats]:
    """Read the sample windows of the common grid from one image (own dtype), and its statistics."""
    with AlignedReader(info, grid) as reader:
        samples = [reader.read_native(w) for w in windows]
    overview = read_overview_sample(info, grid)
    return samples, sample_stats([overview] if overview is not None else samples)


def read_overview_sample(info: RasterInfo, grid: Grid) -> tuple[np.ndarray, np.ndarray] | None:
    """Read the image's part inside ``grid`` from its overviews, decimated; None without overviews.

    Returns ``(data float32 (C, h, w), valid bool (h, w))`` in the image's own pixel space
    (statistics do not need the common grid's geometry, only its footprint).
    """
    if not info.has_overviews:
        return None
    left, bottom, right, top = footprint_in(grid, info.grid.crs)
    image_window = (
        from_bounds(left, bottom, right, top, transform=info.grid.transform)
        .round_offsets()
        .round_lengths()
        .intersection(Window(0, 0, info.grid.width, info.grid.height))
    )
    scale = max(image_window.width, image_window.height) / STATS_OVERVIEW_SIZE
    if scale <= 1:
        return None  # a small scene: the window sample reads it at full resolution anyway
    out_shape = (
        max(1, int(image_window.height / scale)),
        max(1, int(image_window.width / scale)),
    )
    try:
        with rasterio.open(info.dataset) as ds:
            data = ds.read(
                list(info.bands), window=image_window, out_shape=(len(info.bands), *out_shape)
            )
            masks = ds.read_masks(
                list(info.bands), window=image_window, out_shape=(len(info.bands), *out_shape)
            )
    except rasterio.errors.RasterioError as exc:
        raise read_failure(info.path, exc) from exc
    values = data.astype(np.float32)
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(values), axis=0)
    return values, valid


def sample_stats(samples: Sequence[tuple[np.ndarray, np.ndarray]]) -> BandStats:
    """Percentile stretch limits from ``(data (C, h, w), valid (h, w))`` samples of one image.

    Raises:
        InputError: no sample.

    """
    if not samples:
        raise InputError("no pixel could be sampled for normalization statistics")
    channels = samples[0][0].shape[0]
    values = np.concatenate([d.reshape(channels, -1) for d, _ in samples], axis=1)
    valid = np.concatenate([v.reshape(-1) for _, v in samples])
    # band_stats wants (N, C, H, W) and a (N, H, W) mask: one "image" of 1 x n pixels.
    return band_stats(values[None, :, None, :], valid[None, None, :])


def calibrate_on_samples(model: ChangeModel, samples: SceneSamples) -> None:
    """Show the model the normalized sample windows that hold valid pixels in both images."""
    both = zip(samples.before, samples.after, strict=True)
    pairs = [(b, a) for b, a in both if (b[1] & a[1]).any()]
    if not pairs:
        return
    stats_b, stats_a = samples.stats
    # Sample windows all have one shape; they are normalized (and padded square) in place.
    size = max(pairs[0][0][1].shape)
    count = len(pairs)
    before = np.empty((count, pairs[0][0][0].shape[0], size, size), dtype=np.float32)
    after = np.empty((count, pairs[0][1][0].shape[0], size, size), dtype=np.float32)
    valid = np.empty((count, size, size), dtype=bool)
    for i, (read_b, read_a) in enumerate(pairs):
        prepare_tile_into(read_b, read_a, stats_b, stats_a, before[i], after[i], valid[i])
    model.calibrate(before, after, valid)
