"""One change-detection run: read -> align -> tile -> predict -> stitch -> vectorize -> write.

:func:`detect` is the single entry point of both front ends (the CLI and the QGIS plugin);
:func:`describe_pair` answers ``mtrs info`` without running a model.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from mtrs_geo.align import AlignedReader
from mtrs_geo.areas import ground_areas, min_region_pixels
from mtrs_geo.config import DetectConfig
from mtrs_geo.device import parse_device
from mtrs_geo.errors import Cancelled, InputError
from mtrs_geo.grid import (
    Grid,
    common_grid,
    grid_offset,
    panel_layout,
    same_lattice,
    sample_windows,
    tile_windows,
)
from mtrs_geo.model_api import ChangeModel, ModelInfo, load_model, model_info, registered_names
from mtrs_geo.normalize import BandStats
from mtrs_geo.read import RasterInfo, check_pair, open_raster, read_overview_sample, sample_stats
from mtrs_geo.stitch import PROBABILITY_BLOCK, StripStitcher
from mtrs_geo.tiling import TileStream, prepare_tile_into, scene_batches
from mtrs_geo.vectorize import StreamingVectorizer
from mtrs_geo.write import (
    change_table,
    check_raster_output,
    remove_output,
    vector_format,
    write_probability_cog,
    write_vectors,
)

ProgressCallback = Callable[[int, int], None]

# Scene-wide samples for normalization statistics and model calibration.
SAMPLE_WINDOWS = 24
SAMPLE_SIZE = 256
SAMPLE_SEED = 0
# Bounds of GDAL's block cache during a run, in bytes (rasterio hands an integer to GDAL as bytes).
MIN_GDAL_CACHE = 16 * 1024 * 1024
MAX_GDAL_CACHE = 512 * 1024 * 1024


@dataclass(frozen=True)
class PairInfo:
    """The common grid of a pair and how each image is read onto it (what ``mtrs info`` prints)."""

    before: str
    after: str
    crs: str
    width: int
    height: int
    resolution: tuple[float, float]
    bounds: tuple[float, float, float, float]
    transform: tuple[float, float, float, float, float, float]
    area_m2: float  # ground area of the footprint intersection
    tiles: int
    tile_size: int
    overlap: int
    bands_before: tuple[int, ...]
    bands_after: tuple[int, ...]
    before_read: str  # "window" (plain window reads) or "warp" (WarpedVRT)
    after_read: str

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serializable dict."""
        return {
            "before": self.before,
            "after": self.after,
            "crs": self.crs,
            "width": self.width,
            "height": self.height,
            "resolution": list(self.resolution),
            "bounds": list(self.bounds),
            "transform": list(self.transform),
            "area_m2": self.area_m2,
            "tiles": self.tiles,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "bands_before": list(self.bands_before),
            "bands_after": list(self.bands_after),
            "before_read": self.before_read,
            "after_read": self.after_read,
        }


@dataclass(frozen=True)
class DetectResult:
    """What a run did: tile counts, polygons, wall time, the files written, per-step seconds."""

    tiles_total: int
    tiles_run: int
    tiles_skipped: int
    polygons: int
    seconds: float
    outputs: list[Path]
    timings: dict[str, float]
    grid: PairInfo
    model: str = ""
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the one-line summary ``mtrs detect --json`` prints."""
        return {
            "tiles": self.tiles_total,
            "tiles_run": self.tiles_run,
            "tiles_skipped": self.tiles_skipped,
            "polygons": self.polygons,
            "seconds": round(self.seconds, 3),
            "outputs": [str(p) for p in self.outputs],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "model": self.model,
            "device": self.device,
            "grid": self.grid.to_json(),
        }


def _validate_options(config: DetectConfig) -> None:
    """Check option values and output names before any heavy work."""
    if config.batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {config.batch_size}")
    if config.panel_width < 1:
        raise InputError(f"panel width must be at least 1 pixel, got {config.panel_width}")
    if config.prefetch < 1:
        raise InputError(f"prefetch must be at least 1, got {config.prefetch}")
    if not 0.0 <= config.threshold <= 1.0:
        raise InputError(f"threshold must be between 0 and 1, got {config.threshold}")
    if config.min_area < 0:
        raise InputError(f"minimum area must be >= 0 m^2, got {config.min_area}")
    if config.simplify < 0:
        raise InputError(f"simplify tolerance must be >= 0 m, got {config.simplify}")
    parse_device(config.device)
    if config.mask_type not in ("probability", "binary"):
        raise InputError(f"unknown mask type {config.mask_type!r}: use probability or binary")
    outputs = [p for p in (config.output, config.mask_out) if p is not None]
    if config.output is not None:
        vector_format(Path(config.output))
    if config.mask_out is not None:
        check_raster_output(Path(config.mask_out))
    for path in outputs:
        if not Path(path).parent.is_dir():
            raise InputError(f"output folder does not exist: {Path(path).parent}")


def _open_pair(config: DetectConfig) -> tuple[RasterInfo, RasterInfo]:
    before = open_raster(config.before, config.bands_before, "before")
    after_bands = config.bands_after if config.bands_after is not None else config.bands_before
    after = open_raster(config.after, after_bands, "after")
    return before, after


def _pair_info(before: RasterInfo, after: RasterInfo, grid: Grid, config: DetectConfig) -> PairInfo:
    footprint = gpd.GeoDataFrame(geometry=[shapely.box(*grid.bounds)], crs=grid.crs)
    t = grid.transform
    return PairInfo(
        before=str(before.path),
        after=str(after.path),
        crs=grid.crs.to_string(),
        width=grid.width,
        height=grid.height,
        resolution=grid.res,
        bounds=grid.bounds,
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        area_m2=float(ground_areas(footprint)[0]),
        tiles=len(tile_windows(grid.width, grid.height, config.tile_size, config.overlap)),
        tile_size=config.tile_size,
        overlap=config.overlap,
        bands_before=before.bands,
        bands_after=after.bands,
        before_read="window" if same_lattice(before.grid, grid) else "warp",
        after_read="window" if same_lattice(after.grid, grid) else "warp",
    )


def _pair_grid(before: RasterInfo, after: RasterInfo, config: DetectConfig) -> Grid:
    return common_grid(before.grid, after.grid, crs=config.crs, resolution=config.resolution)


def describe_pair(config: DetectConfig) -> PairInfo:
    """Open and check a pair, and describe its common grid and tiling (no model is run).

    Raises:
        InputError: unreadable images, no CRS, bad bands, disjoint footprints, bad tiling options.

    """
    before, after = _open_pair(config)
    check_pair(before, after)
    return _pair_info(before, after, _pair_grid(before, after, config), config)


def _registered_info(name: str) -> ModelInfo | None:
    """Describe a registered model cheaply; None for a checkpoint path."""
    return model_info(name) if name in registered_names() else None


Samples = list[tuple[np.ndarray, np.ndarray]]


def _scene_samples(
    info: RasterInfo, grid: Grid, windows: list[Window]
) -> tuple[Samples, BandStats]:
    """Read the sample windows of the common grid from one image (own dtype), and its statistics."""
    with AlignedReader(info, grid) as reader:
        samples = [reader.read_native(w) for w in windows]
    return samples, _stats(info, grid, samples)


def _pair_samples(
    before: RasterInfo, after: RasterInfo, grid: Grid, size: int
) -> tuple[Samples, BandStats, Samples, BandStats]:
    """:func:`_scene_samples` of both images, the before image's in a second thread.

    When the before image is read on the grid's lattice, each seeded window lies inside one of its
    file blocks where blocks are large enough (one block decoded per window). Each thread opens its
    own dataset handles; GDAL decodes without the GIL, so the two images' sample reads overlap.
    """
    block, origin = (1, 1), (0, 0)
    if same_lattice(before.grid, grid):
        col, row = grid_offset(before.grid, grid)  # the grid's first pixel in the image
        block = before.block_shape
        origin = (-row % block[0], -col % block[1])
    windows = sample_windows(
        grid.width, grid.height, size, SAMPLE_WINDOWS, SAMPLE_SEED, block, origin
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtrs-samples") as pool:
        future = pool.submit(_scene_samples, before, grid, windows)
        samples_a, stats_a = _scene_samples(after, grid, windows)
        samples_b, stats_b = future.result()
    return samples_b, stats_b, samples_a, stats_a


def _stats(info: RasterInfo, grid: Grid, samples: Samples) -> BandStats:
    """Statistics from the image's overviews when it has them, else from the window samples."""
    overview = read_overview_sample(info, grid)
    return sample_stats([overview] if overview is not None else samples)


def _calibrate(
    model: ChangeModel,
    samples_b: Samples,
    samples_a: Samples,
    stats_b: BandStats,
    stats_a: BandStats,
) -> None:
    """Show the model the normalized scene-wide samples that hold valid pixels."""
    pairs = [(b, a) for b, a in zip(samples_b, samples_a, strict=True) if (b[1] & a[1]).any()]
    if not pairs:
        return
    # Sample windows all have one shape; they are normalized (and padded square) in place.
    size = max(pairs[0][0][1].shape)
    count = len(pairs)
    before = np.empty((count, pairs[0][0][0].shape[0], size, size), dtype=np.float32)
    after = np.empty((count, pairs[0][1][0].shape[0], size, size), dtype=np.float32)
    valid = np.empty((count, size, size), dtype=bool)
    for i, (read_b, read_a) in enumerate(pairs):
        prepare_tile_into(read_b, read_a, stats_b, stats_a, before[i], after[i], valid[i])
    model.calibrate(before, after, valid)


@contextlib.contextmanager
def _removed_on_failure(paths: list[Path]) -> Iterator[None]:
    """Remove the finished outputs in ``paths`` if the block fails: a run writes all or nothing."""
    try:
        yield
    except BaseException:
        for path in paths:
            remove_output(path)  # with a shapefile's sidecars
        raise


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled: no output was written")


def detect(
    config: DetectConfig,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> DetectResult:
    """Run change detection on a pair and write the outputs the config asks for.

    Args:
        config: the run's options.
        progress: called as ``progress(done_tiles, total_tiles)`` from the calling thread after each
            batch (skipped tiles count as done).
        cancel: when set, the run stops at the next batch, removes temporaries and partial outputs
            and raises :class:`~mtrs_geo.errors.Cancelled`.

    Returns:
        What was done, with per-step timings (seconds) under ``read``, ``model``, ``stitch``,
        ``vectorize``, ``write`` (and ``setup``: opening, statistics, model loading, calibration).

    Raises:
        InputError: a bad input or option, found before any heavy work.
        Cancelled: ``cancel`` was set.

    """
    # GDAL's block cache defaults to 5 % of the machine's RAM and would keep every block read.
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(config)):
        return _detect(config, progress, cancel)


def gdal_cache_bytes(config: DetectConfig) -> int:
    """GDAL block cache for a run: about one row of tiles of a panel, inputs and output raster.

    Tiles are read row by row within a panel (a run of tile columns about ``panel_width`` wide),
    so blocks shared by overlapping windows are decompressed once while memory follows the panel's
    width, like the stitching strip. A cheap estimate from the files' headers: (panel width + two
    input blocks, for the blocks cut by the panel's edges) x (tile + one input block) rows x input
    bytes per pixel, plus, when the probability raster is written (``--mask-out``), two rows of
    output blocks (the stitcher's strips end mid-block, so a partly written block row stays cached
    beside the one being filled), plus a quarter for GDAL's own overhead. An estimate that is too
    tight makes GDAL evict input blocks a later window still needs and decode them twice.
    """
    try:
        with rasterio.open(config.before) as b, rasterio.open(config.after) as a:
            block_height = max(ds.block_shapes[0][0] for ds in (b, a))
            block_width = max(ds.block_shapes[0][1] for ds in (b, a))
            width = min(max(b.width, a.width), config.panel_width + 2 * block_width)
            input_bytes = sum(ds.count * np.dtype(ds.dtypes[0]).itemsize for ds in (b, a))
    except rasterio.errors.RasterioIOError:
        return MIN_GDAL_CACHE  # the run reports the unreadable file itself
    # The probability raster is only written for --mask-out (polygons come from the rows in memory).
    output_rows = 2 * PROBABILITY_BLOCK if config.mask_out is not None else 0
    rows = (config.tile_size + block_height) * input_bytes + output_rows * 4
    wanted = width * rows * 5 // 4
    return int(min(MAX_GDAL_CACHE, max(MIN_GDAL_CACHE, wanted)))


def _detect(
    config: DetectConfig,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> DetectResult:
    """Run :func:`detect` (inside its GDAL environment)."""
    start = time.perf_counter()
    timings = dict.fromkeys(("setup", "read", "model", "stitch", "vectorize", "write"), 0.0)
    # Everything a user can get wrong is checked before the model loads or a tile is read.
    _validate_options(config)
    before, after = _open_pair(config)
    check_pair(before, after, _registered_info(config.model))
    grid = _pair_grid(before, after, config)
    panels = panel_layout(
        tile_windows(grid.width, grid.height, config.tile_size, config.overlap),
        grid.width,
        config.panel_width,
    )
    windows = [window for panel in panels for window in panel.windows]
    pair = _pair_info(before, after, grid, config)
    model = load_model(config.model)
    check_pair(before, after, model.info)
    model = model.to(config.device)
    _check_cancel(cancel)

    total = len(windows)
    stream = TileStream(
        before, after, grid, windows, config.tile_size, config.batch_size, config.prefetch
    )
    tiles_run = 0
    outputs: list[Path] = []
    scratch = Path(tempfile.mkdtemp(prefix="mtrs-run-"))
    try:
        samples_b, stats_b, samples_a, stats_a = _pair_samples(
            before, after, grid, min(SAMPLE_SIZE, config.tile_size)
        )
        # The first tiles are read while the model takes the query and the samples (not during
        # the sample reads: three readers on two cores and a shared block cache slow all down).
        stream.start()
        query = config.query.strip()
        model.prepare(None if config.any_change or not query else query)
        _calibrate(model, samples_b, samples_a, stats_b, stats_a)
        del samples_b, samples_a  # scene samples are done with; do not hold them through the run
        if model.scene_pass:  # a streamed first pass over the whole scene (cva's histogram)
            model.calibrate_scene(
                scene_batches(
                    before, after, grid, config.tile_size, config.batch_size,
                    stats_b, stats_a, config.panel_width, cancel,
                )  # fmt: skip
            )
            _check_cancel(cancel)
        timings["setup"] = time.perf_counter() - start

        # Polygons are built from the stitched rows as they are finished; the probability raster
        # is written only when --mask-out asks for it.
        prob_path = scratch / "probability.tif" if config.mask_out is not None else None
        vectorizer = StreamingVectorizer(
            grid.width, grid.height, grid.transform, grid.crs, config.threshold,
            PROBABILITY_BLOCK, panels=panels,
            min_pixels=min_region_pixels(grid, config.min_area, config.simplify),
        )  # fmt: skip

        def vectorize_rows(first_row: int, first_col: int, rows: np.ndarray) -> None:
            t = time.perf_counter()
            vectorizer.add_rows(first_row, rows, first_col)
            timings["vectorize"] += time.perf_counter() - t

        with (
            model.session(),
            StripStitcher(
                prob_path, grid, config.tile_size, config.overlap, vectorize_rows, panels
            ) as stitcher,
        ):
            done = 0
            for batch in stream.batches(stats_b, stats_a):
                _check_cancel(cancel)
                t0 = time.perf_counter()
                probabilities = model.predict(batch.before, batch.after)
                t1 = time.perf_counter()
                for window, tile_prob, tile_valid in zip(
                    batch.windows, probabilities, batch.valid, strict=True
                ):
                    stitcher.add(window, tile_prob, tile_valid)
                timings["model"] += t1 - t0
                timings["stitch"] += time.perf_counter() - t1
                tiles_run += len(batch.windows)
                done = batch.tiles_done
                if progress is not None:
                    progress(done, total)
            _check_cancel(cancel)
            t0 = time.perf_counter()
        timings["stitch"] += time.perf_counter() - t0
        timings["stitch"] -= timings["vectorize"]  # the rows vectorized while stitching
        timings["read"] = stream.read_seconds
        if progress is not None and done < total:
            progress(total, total)

        t0 = time.perf_counter()
        polygons = vectorizer.result()
        table = change_table(
            polygons,
            query=config.query,
            model=model.info.name,
            before=before.name,
            after=after.name,
            min_area_m2=config.min_area,
            simplify_m=config.simplify,
            extra=dict(config.extra_attributes),
        )
        timings["vectorize"] += time.perf_counter() - t0
        _check_cancel(cancel)

        t0 = time.perf_counter()
        with _removed_on_failure(outputs):
            if config.output is not None:
                outputs.append(write_vectors(table, Path(config.output)))
                _check_cancel(cancel)
            if config.mask_out is not None:
                assert prob_path is not None
                outputs.append(
                    write_probability_cog(
                        prob_path, Path(config.mask_out), config.mask_type, config.threshold
                    )
                )
        timings["write"] = time.perf_counter() - t0
    finally:
        stream.close()
        shutil.rmtree(scratch, ignore_errors=True)

    return DetectResult(
        tiles_total=total,
        tiles_run=tiles_run,
        tiles_skipped=stream.skipped,
        polygons=len(table),
        seconds=time.perf_counter() - start,
        outputs=outputs,
        timings=timings,
        grid=pair,
        model=model.info.name,
        device=model.device,
    )
