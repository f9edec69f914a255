"""One change-detection run: read -> align -> tile -> predict -> stitch -> vectorize -> write.

:func:`detect` is the single entry point of both front ends (the CLI and the QGIS plugin);
:func:`describe_pair` answers ``mtrs info`` without running a model.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from mtrs_geo.aoi import AreaOfInterest, area_of_interest
from mtrs_geo.bands import default_band_pair, describe_choice
from mtrs_geo.cancel import begin_commit, check_cancel
from mtrs_geo.config import BUNDLED_LANGUAGE_MODELS, DetectConfig, same_file
from mtrs_geo.dates import pair_dates
from mtrs_geo.errors import InputError, ModelError, MtrsError
from mtrs_geo.grid import Grid, Tiling, same_lattice, scene_tiling
from mtrs_geo.model_api import (
    ChangeModel,
    ModelInfo,
    PixelScoreModel,
    load_model,
    model_info,
    registered_names,
)
from mtrs_geo.normalize import BandStats
from mtrs_geo.probability_raster import PROBABILITY_BLOCK
from mtrs_geo.read import RasterInfo, align_longitudes, check_pair, open_raster, pixel_grid
from mtrs_geo.scene_samples import calibrate_on_samples, read_scene_samples
from mtrs_geo.score_pass import (
    PASS_WORKERS,
    ScoreStore,
    pass_shares,
    score_rows,
    score_scene,
)
from mtrs_geo.sources import local_inputs, quiet_open, remote_options, resolve_source
from mtrs_geo.stitch import RowSink, StripStitcher
from mtrs_geo.tiling import (
    TileBatch,
    TileStream,
    check_resources,
    scene_batches,
)
from mtrs_geo.timeseries import (
    check_time_order,
    image_roles,
    interval_label,
    series_dates,
    series_grid,
)
from mtrs_geo.write import (
    StagedOutputs,
    write_failure,
    write_probability_cog,
    write_vectors,
)

if TYPE_CHECKING:
    from mtrs_geo.background_vectorize import BackgroundVectorizer
    from mtrs_geo.distributed import Scheduler

# geopandas, shapely and scipy (areas, vectorize, the output table) are imported when a run needs
# them: importing the engine stays well under a second.

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RunMessage:
    """A line a run reports while it works: what it is doing (``stage``) or a ``note`` to the user.

    Front ends show notes always (once) and stages when they show progress.
    """

    kind: Literal["stage", "note"]
    text: str


MessageCallback = Callable[[RunMessage], None]

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
    area_m2: float  # ground area of the footprint intersection (square pixels on a pixel grid)
    tiles: int
    tile_size: int
    overlap: int
    bands_before: tuple[int, ...]
    bands_after: tuple[int, ...]
    before_read: str  # "window" (plain window reads) or "warp" (WarpedVRT)
    after_read: str
    # Every image in time order (the pair, or a time series) and its acquisition date ("": none).
    images: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    pixel_grid: bool = False  # images paired pixel by pixel: lengths and areas in pixels

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serializable dict."""
        return {
            "images": list(self.images),
            "dates": list(self.dates),
            "pixel_grid": self.pixel_grid,
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
    query_used: bool = False  # False: no query, any-change mode, or a model that ignores queries
    queries: tuple[str, ...] = ()  # the queries answered, in order
    intervals: int = 1  # consecutive pairs compared (a time series of n images: n - 1)

    def to_json(self) -> dict[str, Any]:
        """Return the one-line summary ``mtrs detect --json`` prints."""
        return {
            "queries": list(self.queries),
            "intervals": self.intervals,
            "tiles": self.tiles_total,
            "tiles_run": self.tiles_run,
            "tiles_skipped": self.tiles_skipped,
            "polygons": self.polygons,
            "seconds": round(self.seconds, 3),
            "outputs": [str(p) for p in self.outputs],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "model": self.model,
            "device": self.device,
            "query_used": self.query_used,
            "grid": self.grid.to_json(),
        }


def _check_outputs_against_files(
    config: DetectConfig, before: RasterInfo, after: RasterInfo
) -> None:
    """Refuse an output that is one of the files GDAL reads for an input (a VRT's sources too).

    Raises:
        InputError: an output names a file an input image is read from.

    """
    for info in (before, after):
        try:
            with rasterio.open(info.dataset) as ds:
                files = [Path(name) for name in ds.files]
        except rasterio.errors.RasterioError:
            files = []
        # A stack (list of files, STAC assets) is a VRT document that names no file itself.
        files += [Path(name) for name in local_inputs(info.source.files if info.source else [])]
        for output in config.outputs():
            for name in files:
                if same_file(output, name):
                    raise InputError(
                        f"output {output} is {name}, which the {info.role} image is read from: "
                        "writing it would destroy the input; choose another name"
                    )


def _open_pair(
    config: DetectConfig,
    say: MessageCallback | None = None,
    roles: tuple[str, str] = ("before", "after"),
) -> tuple[RasterInfo, RasterInfo]:
    """Open the config's before and after images; ``roles`` is what messages call them."""
    before_bands = config.bands_before
    after_bands = config.bands_after if config.bands_after is not None else config.bands_before
    if before_bands is None and after_bands is None:
        # A 3-band model reads the red, green and blue bands of a multispectral image.
        registered = _registered_info(config.model)
        needed = registered.in_channels if registered is not None else None
        choices = default_band_pair((config.before, config.after), needed, roles)
        for role, choice in zip(roles, choices, strict=True):
            if choice is not None and say is not None:
                say(RunMessage("note", describe_choice(role, choice)))
        before_bands = choices[0].bands if choices[0] is not None else None
        after_bands = choices[1].bands if choices[1] is not None else None
    grid, assets = config.pixel_grid, config.assets
    before = open_raster(config.before, before_bands, roles[0], on_pixel_grid=grid, assets=assets)
    after = open_raster(config.after, after_bands, roles[1], on_pixel_grid=grid, assets=assets)
    return before, align_longitudes(before, after)  # a pair across the antimeridian meets


def _pair_info(
    images: Sequence[RasterInfo], grid: Grid, tiling: Tiling, dates: Sequence[str]
) -> PairInfo:
    import geopandas as gpd
    import shapely

    from mtrs_geo.areas import footprint_overlap, ground_areas

    before, after = images[0], images[-1]
    overlap = footprint_overlap([image.grid for image in images], grid)
    if overlap.is_empty:  # lattice pixels only just inside: measure the grid itself
        overlap = shapely.box(*grid.bounds)
    footprint = gpd.GeoDataFrame(geometry=[overlap], crs=grid.crs)
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
        tiles=tiling.tiles,
        tile_size=tiling.tile_size,
        overlap=tiling.overlap,
        bands_before=before.bands,
        bands_after=after.bands,
        before_read="window" if same_lattice(before.grid, grid) else "warp",
        after_read="window" if same_lattice(after.grid, grid) else "warp",
        images=tuple(str(image.path) for image in images),
        dates=tuple(dates),
        pixel_grid=grid.crs == pixel_grid(1, 1).crs,
    )


def _open_images(config: DetectConfig, say: MessageCallback | None = None) -> list[RasterInfo]:
    """Open every input image: the pair, then each later image of a time series."""
    roles = image_roles(len(config.images()))
    images = list(_open_pair(config, say, (roles[0], roles[1])))
    later_bands = config.bands_after if config.bands_after is not None else config.bands_before
    for image, role in zip(config.more_images, roles[2:], strict=True):
        # Opened as the after image of a pair with the first one: its bands, its longitudes.
        later = replace(config, after=image, bands_after=later_bands)
        images.append(_open_pair(later, roles=(roles[0], role))[1])
    return images


def _image_dates(config: DetectConfig) -> list[str]:
    """Acquisition dates of every image (``""`` unknown), checked to be in time order."""
    if not config.more_images and not config.dates:
        dates = pair_dates(config.before, config.after, config.before_date, config.after_date)
        found = [dates["before_date"], dates["after_date"]]
        # One rule however the dates come: reversed, "new" would answer what disappeared.
        check_time_order(found)
        return found
    return series_dates(config.images(), config.dates)


def _common_grid(
    images: Sequence[RasterInfo], config: DetectConfig
) -> tuple[Grid, AreaOfInterest | None, Tiling]:
    """Return the images' common grid (cut to the area of interest), the area, and its tiling.

    Raises:
        InputError: images that do not overlap, bad tiling options, a run that cannot fit.

    """
    grid = series_grid([image.grid for image in images], config.crs, config.resolution)
    area = area_of_interest(grid, config.extent, config.extent_crs, config.aoi)
    if area is not None:  # only the area's part of the grid is read, tiled and written
        grid = area.crop(grid)
    # Memory and grid size are estimated before a window is built: refuse what cannot fit.
    for before, after in itertools.pairwise(images):
        check_resources(
            before, after, grid, config.tile_size, config.overlap, config.batch_size,
            config.prefetch, config.panel_width,
        )  # fmt: skip
    return grid, area, scene_tiling(grid, config.tile_size, config.overlap, config.panel_width)


def describe_pair(config: DetectConfig) -> PairInfo:
    """Open and check a pair (or time series), describe its common grid and tiling (no model).

    Raises:
        InputError: unreadable images, no CRS, bad bands, disjoint footprints, bad tiling options.

    """
    config.check(needs_output=False)
    with run_environment(config):
        images = _open_images(config)
        for before, after in itertools.pairwise(images):
            check_pair(before, after)
        grid, _, tiling = _common_grid(images, config)
        return _pair_info(images, grid, tiling, _image_dates(config))


def _registered_info(name: str) -> ModelInfo | None:
    """Describe a registered model cheaply; None for a checkpoint path."""
    return model_info(name) if name in registered_names() else None


def detect(
    config: DetectConfig,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    messages: MessageCallback | None = None,
    models: Callable[[str], ChangeModel] | None = None,
    scheduler: str | Scheduler | None = None,
) -> DetectResult:
    """Run change detection on a pair and write the outputs the config asks for.

    Every output is written in a hidden scratch folder beside its destination, checked, and
    renamed into place together with the others at the very end (the commit): a run that fails or
    is cancelled before leaves the files it would have replaced as they were; a run that got to
    its commit finishes, whatever is asked of ``cancel`` then.

    Args:
        config: the run's options.
        progress: called as ``progress(done_tiles, total_tiles)`` from the calling thread after each
            batch (skipped tiles count as done; on a cluster, after each panel).
        cancel: when set before the commit, the run stops at the next batch, removes its scratch
            files and raises :class:`~mtrs_geo.errors.Cancelled`. A
            :class:`~mtrs_geo.cancel.CancelSwitch` also tells the caller when it is too late.
        messages: receives :class:`RunMessage` lines: what the setup is loading, and notes (a
            query the model ignores).
        models: returns the model of a name (default: :func:`load_model` on the run's device, in
            its fastest runtime there); a warm engine passes
            a cache (:class:`mtrs_geo.serve.ModelCache`).
        scheduler: split the scene into panels predicted on a Dask cluster: a scheduler address
            (``tcp://host:8786``) or ``local:N`` (:func:`mtrs_geo.distributed.detect_on_cluster`;
            the same outputs as this process would write).

    Returns:
        What was done, with per-step timings (seconds) under ``read``, ``model``, ``stitch``,
        ``vectorize``, ``write`` (and ``setup``: opening, statistics, model loading, calibration).

    Raises:
        InputError: a bad input or option, found before any heavy work.
        OutputError: an output could not be written whole (a full disk, a vanished scratch
            folder); the files it would have replaced are kept.
        Cancelled: ``cancel`` was set before the commit.

    """
    if scheduler is not None:
        from mtrs_geo.distributed import detect_on_cluster

        return detect_on_cluster(config, scheduler, progress, cancel, messages)
    if models is None:  # loaded for the run's device: its fastest runtime there
        models = functools.partial(load_model, device=config.device)
    return run_detect(config, LocalPredictor(models), progress, cancel, messages)


def run_detect(
    config: DetectConfig,
    predictor: Predictor,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    messages: MessageCallback | None = None,
) -> DetectResult:
    """:func:`detect` with the tiles predicted by ``predictor`` (here, or on a cluster)."""
    check_cancel(cancel)
    with run_environment(config):
        say = messages or (lambda message: None)
        return _detect(config, progress, cancel, say, predictor)


@contextlib.contextmanager
def run_environment(config: DetectConfig) -> Iterator[None]:
    """Hold the GDAL settings and warning filters a run reads its images in (a worker's too)."""
    # GDAL's block cache defaults to 5 % of the machine's RAM and would keep every block read.
    remote = remote_options(*config.images())
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_bytes(config), **remote), warnings.catch_warnings():
        # Images on a pixel grid have no georeferencing: rasterio would warn at every open.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


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
        names = [resolve_source(image, assets=config.assets).dataset
                 for image in (config.before, config.after)]  # fmt: skip
        with quiet_open(names[0]) as b, quiet_open(names[1]) as a:
            block_height = max(ds.block_shapes[0][0] for ds in (b, a))
            block_width = max(ds.block_shapes[0][1] for ds in (b, a))
            width = min(max(b.width, a.width), config.panel_width + 2 * block_width)
            input_bytes = sum(ds.count * np.dtype(ds.dtypes[0]).itemsize for ds in (b, a))
    except (rasterio.errors.RasterioIOError, InputError):
        return MIN_GDAL_CACHE  # the run reports the unreadable file itself
    # The probability raster is only written for --mask-out (polygons come from the rows in memory).
    output_rows = 2 * PROBABILITY_BLOCK if config.mask_out is not None else 0
    rows = (config.tile_size + block_height) * input_bytes + output_rows * 4
    wanted = width * rows * 5 // 4
    return int(min(MAX_GDAL_CACHE, max(MIN_GDAL_CACHE, wanted)))


def _query_note(config: DetectConfig, info: ModelInfo) -> str | None:
    """Say that the model cannot use the query (None when it is used or absent)."""
    queries = [query for query in config.query_list() if query]
    if not queries or config.any_change or info.query_aware:
        return None
    if len(queries) > 1:
        named = ", ".join(repr(query) for query in queries)
        return f"note: model {info.name!r} ignores the queries {named}: it finds any change"
    return f"note: model {info.name!r} ignores the query {queries[0]!r}: it finds any change"


def _ignored_words(config: DetectConfig) -> list[str]:
    """Return notes on the queries' words the bundled model was not taught (answered without)."""
    if config.model not in BUNDLED_LANGUAGE_MODELS or config.any_change:
        return []
    from mtrs_geo.models.query_words import query_notes

    return query_notes([query for query in config.query_list() if query])


@dataclass(frozen=True)
class Scene:
    """What a run compares, opened and checked: its images in time order, dates, grid, tiles."""

    images: list[RasterInfo]
    dates: list[str]  # one per image ("": unknown)
    grid: Grid
    area: AreaOfInterest | None
    tiling: Tiling
    registered: ModelInfo | None  # the run's model described cheaply (None: a checkpoint path)

    @functools.cached_property
    def pair(self) -> PairInfo:
        """Describe the scene as ``mtrs info`` does.

        Asked for at the end of a run: its ground area needs geopandas, which a run imports only
        once its tiles are done.
        """
        return _pair_info(self.images, self.grid, self.tiling, self.dates)

    def intervals(self) -> list[tuple[int, int]]:
        """Return the pairs of consecutive images compared, as indexes (one pair: ``(0, 1)``)."""
        return list(itertools.pairwise(range(len(self.images))))

    def label(self, first: int, second: int) -> str:
        """Name the interval between images ``first`` and ``second`` (dates, else file names)."""
        images, dates = self.images, self.dates
        return interval_label(dates[first], dates[second], images[first].name, images[second].name)


@dataclass(frozen=True)
class Answers:
    """Every answer of a run, ready to write: one polygon table, a raster per interval and query."""

    table: Any  # GeoDataFrame: every interval's and query's polygons, ids numbered together
    rasters: list[Path | None]  # the stitched probabilities (only with a mask output)
    descriptions: list[str]  # what each raster answers: the query (and the interval)


@dataclass
class IntervalResult:
    """What the model made of one pair of dates: a probability raster and polygons per query."""

    polygons: list[Any]  # GeoDataFrames (mean_score + geometry), one per query
    probabilities: list[Path | None]  # the stitched rasters (only with a mask output)
    tiles_run: int
    tiles_skipped: int


@dataclass
class RunPlan:
    """The parts of one run that every interval of it shares."""

    config: DetectConfig
    grid: Grid
    area: AreaOfInterest | None
    tiling: Tiling
    scratch: Path
    timings: dict[str, float]
    progress: ProgressCallback | None
    cancel: threading.Event | None
    say: MessageCallback
    total: int  # tiles of the whole run (every interval)
    imports: threading.Thread | None = None  # :func:`_import_vectorizing_libraries`

    def finish_imports(self) -> None:
        """Wait for the libraries the polygons need to be imported (the end of the setup)."""
        if self.imports is not None:
            self.imports.join()

    def batch_progress(self, done_before: int) -> Callable[[TileBatch], None] | None:
        """Return what reports the run's progress after each batch of an interval (or None).

        ``done_before``: the tiles of the earlier intervals.
        """
        report = self.tiles_progress(done_before)
        if report is None:
            return None
        return lambda batch: report(batch.tiles_done)

    def tiles_progress(self, done_before: int) -> Callable[[int], None] | None:
        """Return what reports the run's progress from the tiles done in an interval (or None)."""
        report = self.progress
        if report is None:
            return None
        return lambda tiles_done: report(done_before + tiles_done, self.total)

    def probability_paths(self, index: int) -> list[Path | None]:
        """Return the scratch probability raster of each query of interval ``index`` (or None)."""
        queries = self.config.query_list()
        if self.config.mask_out is None:
            return [None] * len(queries)
        one = len(queries) == 1 and index == 0
        return [
            self.scratch / ("probability.tif" if one else f"probability-{index}-{q}.tif")
            for q in range(len(queries))
        ]


class Predictor(Protocol):
    """Where a run's model lives and its tiles are predicted: this process, or a cluster."""

    def load(
        self, config: DetectConfig, check: Callable[[ModelInfo], None], say: MessageCallback
    ) -> tuple[ModelInfo, str]:
        """Load the run's model, ``check`` its description, move it to the run's device.

        Returns:
            The model's description and the device it runs on (as torch names it).

        """
        ...

    def interval(
        self, run: RunPlan, before: RasterInfo, after: RasterInfo, index: int, done_before: int
    ) -> IntervalResult:
        """Predict, stitch and vectorize one pair of dates (see :func:`_predict_interval`)."""
        ...


class LocalPredictor:
    """The model in this process: loaded by ``models`` (a name or checkpoint folder)."""

    def __init__(self, models: Callable[[str], ChangeModel]) -> None:
        self._models = models
        self._model: ChangeModel | None = None

    def load(
        self, config: DetectConfig, check: Callable[[ModelInfo], None], say: MessageCallback
    ) -> tuple[ModelInfo, str]:
        """Load the model, check it, move it to the run's device."""
        model = self._models(config.model)
        check(model.info)
        say(RunMessage("stage", f"moving model {model.info.name} to device {config.device}"))
        self._model = model.to(config.device)
        return self._model.info, self._model.device

    def interval(
        self, run: RunPlan, before: RasterInfo, after: RasterInfo, index: int, done_before: int
    ) -> IntervalResult:
        """Run :func:`_predict_interval` with the loaded model."""
        assert self._model is not None, "load() comes first"
        return _predict_interval(run, self._model, before, after, index, done_before)


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[key]``."""
    start = time.perf_counter()
    yield
    timings[key] += time.perf_counter() - start


RowsCallback = Callable[[int, int, np.ndarray], None]


def timed_rows(timings: dict[str, float], key: str, rows_to: RowsCallback) -> RowsCallback:
    """``rows_to`` that adds its seconds to ``timings[key]`` (the stitcher's rows, vectorized)."""

    def on_rows(first_row: int, first_col: int, rows: np.ndarray) -> None:
        with timed(timings, key):
            rows_to(first_row, first_col, rows)

    return on_rows


def _rows_into(vectorizer: BackgroundVectorizer) -> RowsCallback:
    """Return a stitcher callback handing its rows to a streaming vectorizer."""
    return lambda first_row, first_col, rows: vectorizer.add_rows(first_row, rows, first_col)


def predict_tiles(
    model: ChangeModel,
    stream: TileStream,
    stats: tuple[BandStats, BandStats],
    stitchers: Sequence[StripStitcher],
    grid: Grid,
    area: AreaOfInterest | None,
    cancel: threading.Event | None,
    timings: dict[str, float],
    on_batch: Callable[[TileBatch], None] | None = None,
) -> int:
    """Predict every batch of ``stream`` and add each query's answers to its stitcher.

    Adds to ``timings["model"]`` and ``timings["stitch"]``; calls ``on_batch`` after each batch.

    Returns:
        The tiles predicted (the stream's skipped tiles aside).

    Raises:
        ModelError: the model answered another number of queries than there are stitchers.
        Cancelled: ``cancel`` was set.

    """
    tiles_run = 0
    for batch in stream.batches(*stats):
        check_cancel(cancel)
        t0 = time.perf_counter()
        answers = model.predict_queries(batch.before, batch.after)
        t1 = time.perf_counter()
        if answers.shape[0] != len(stitchers):
            raise ModelError(
                f"model {model.info.name!r} answered {answers.shape[0]} queries of {len(stitchers)}"
            )
        for tile, (window, tile_valid) in enumerate(zip(batch.windows, batch.valid, strict=True)):
            if area is not None:  # pixels outside the area's polygons are nodata
                tile_valid = area.inside(grid, window, tile_valid)
            for stitcher, answer in zip(stitchers, answers, strict=True):
                stitcher.add(window, answer[tile], tile_valid)
        timings["model"] += t1 - t0
        timings["stitch"] += time.perf_counter() - t1
        tiles_run += len(batch.windows)
        if on_batch is not None:
            on_batch(batch)
    check_cancel(cancel)
    return tiles_run


def _predict_interval(
    run: RunPlan,
    model: ChangeModel,
    before: RasterInfo,
    after: RasterInfo,
    index: int,
    done_before: int,
) -> IntervalResult:
    """Predict every query of the run over one pair of dates; stitch and vectorize each answer.

    Args:
        run: the run's shared state.
        model: the run's model (on its device).
        before: the earlier image.
        after: the later image.
        index: the interval's position (0: the first pair).
        done_before: tiles done in the earlier intervals (for the progress callback).

    """
    if isinstance(model, PixelScoreModel):  # every pixel decoded once (cva)
        return _score_interval(run, model, before, after, index, done_before)
    config, timings = run.config, run.timings
    windows, tile_size = run.tiling.windows, run.tiling.tile_size
    with contextlib.ExitStack() as stack:
        stream = TileStream(
            before, after, run.grid, windows, tile_size, config.batch_size, config.prefetch
        )
        stack.callback(stream.close)
        with timed(timings, "setup"):
            stats = _calibrate(run, model, before, after, stream, index)
            run.finish_imports()
        paths = run.probability_paths(index)
        vectorizers = _vectorizers(run, stack)
        progress = run.batch_progress(done_before)
        tiles_run = _into_stitchers(
            run, paths, vectorizers, model,
            lambda stitchers: predict_tiles(
                model, stream, stats, stitchers, run.grid, run.area, run.cancel, timings, progress
            ),
        )  # fmt: skip
        timings["read"] += stream.read_seconds
        with timed(timings, "vectorize"):  # what is left of the rows' polygonization
            polygons = [vectorizer.result() for vectorizer in vectorizers]
        return IntervalResult(polygons, paths, tiles_run, stream.skipped)


def _score_interval(
    run: RunPlan,
    model: PixelScoreModel,
    before: RasterInfo,
    after: RasterInfo,
    index: int,
    done_before: int,
) -> IntervalResult:
    """:func:`_predict_interval` for a pixel score model, reading every pixel once.

    The scene samples, then one pass over the scene without overlap that keeps every pixel's
    score and settles the model on all of them (:func:`mtrs_geo.score_pass.score_scene`), then
    the rows of answers computed once from the kept scores (:func:`~mtrs_geo.score_pass.
    score_rows`): the outputs of :func:`_predict_interval` (up to the float rounding of its
    blend), without a second decode and without stitching.
    """
    config, timings, tiling = run.config, run.timings, run.tiling
    windows = [window for panel in tiling.pass_panels for window in panel.windows]
    with contextlib.ExitStack() as stack:
        streams = [
            TileStream(
                before, after, run.grid, share, tiling.tile_size, config.batch_size,
                config.prefetch,
            )
            for share in pass_shares(windows, PASS_WORKERS)
        ]  # fmt: skip
        for stream in streams:
            stack.callback(stream.close)
        with timed(timings, "setup"):
            stats = _calibrate(run, model, before, after, streams[0], index, scene_pass=False)
        for stream in streams[1:]:  # after the samples are read, as the first one
            stream.start()
        paths = run.probability_paths(index)
        vectorizers = _vectorizers(run, stack)
        with ScoreStore(run.grid.height, run.grid.width, run.scratch) as store:
            run.say(RunMessage("stage", "scoring every pixel once"))
            progress = _pass_progress(run.tiles_progress(done_before), len(windows), tiling)
            with model.session():
                score_scene(model, streams, stats, store, run.cancel, timings, progress)
            # The pass (numpy and GDAL, which let go of the GIL) ran beside the imports; the rows
            # of answers need them. 8192^2 cva, 2 idle cores, eight interleaved pairs of runs:
            # median 3.40 s waiting for them before the pass, 3.28 s after it.
            run.finish_imports()
            timings["read"] += sum(stream.read_seconds for stream in streams)
            tiles_run, skipped = _score_rows_into(run, paths, vectorizers, model, store)
            if progress is not None:
                progress(len(windows))  # every tile of the interval is done
        with timed(timings, "vectorize"):  # what is left of the rows' polygonization
            polygons = [vectorizer.result() for vectorizer in vectorizers]
        return IntervalResult(polygons, paths, tiles_run, skipped)


def _pass_progress(
    report: Callable[[int], None] | None, windows: int, tiling: Tiling
) -> Callable[[int], None] | None:
    """Report a pixel score pass's windows done as the interval's tiles done (in proportion).

    The pass reads the scene once in windows without overlap; the run's tiles (with overlap) are
    then stitched from the kept scores in a moment, so progress follows the pass.
    """
    if report is None:
        return None
    tiles = sum(len(panel.windows) for panel in tiling.panels)
    last = -1

    def on_windows(done: int) -> None:
        nonlocal last
        tiles_done = done * tiles // max(windows, 1)
        if tiles_done > last:  # the last call (the skipped windows too) may repeat the end
            last = tiles_done
            report(tiles_done)

    return on_windows


def _calibrate(
    run: RunPlan,
    model: ChangeModel,
    before: RasterInfo,
    after: RasterInfo,
    stream: TileStream,
    index: int,
    scene_pass: bool = True,
) -> tuple[BandStats, BandStats]:
    """Set the model up for one pair of dates: its queries, the scene samples, a scene pass.

    Starts ``stream`` reading once the samples are read. ``scene_pass=False`` leaves the model's
    scene pass (if it has one) to the caller.

    Returns:
        The statistics of both images (before, after) the tiles are normalized with.

    Raises:
        Cancelled: ``run.cancel`` was set during the scene pass.

    """
    config = run.config
    run.say(RunMessage("stage", "reading scene samples"))
    samples = read_scene_samples(before, after, run.grid, config.tile_size)
    # The first tiles are read while the model takes the queries and the samples (not during
    # the sample reads: three readers on two cores and a shared block cache slow all down).
    stream.start()
    if index == 0:
        run.say(RunMessage("stage", "preparing the model"))
        queries = model_queries(config)
        if (note := model.preparing_note(queries)) is not None:
            run.say(RunMessage("note", note))
        prepare_model(model, config, queries)
    if not model.scene_pass:  # a scene pass settles the model on every pixel instead
        calibrate_on_samples(model, samples)
    stats = samples.stats
    del samples  # the scene samples are done with: not held through the run
    if model.scene_pass and scene_pass:  # a streamed first pass over the whole scene (a histogram)
        run.say(RunMessage("stage", "first pass over the whole scene"))
        model.calibrate_scene(
            scene_batches(
                before, after, run.grid, run.tiling, config.batch_size, *stats, run.cancel
            )
        )
        check_cancel(run.cancel)
    return stats


def _vectorizers(run: RunPlan, stack: contextlib.ExitStack) -> list[BackgroundVectorizer]:
    """Return a vectorizer per query: polygons from the stitched rows as they finish.

    Each polygonizes in a thread of its own (:class:`~mtrs_geo.background_vectorize.
    BackgroundVectorizer`) while the run predicts and stitches the next rows; ``stack`` ends them.
    """
    from mtrs_geo.areas import min_region_pixels
    from mtrs_geo.background_vectorize import BackgroundVectorizer
    from mtrs_geo.vectorize import StreamingVectorizer

    config, grid = run.config, run.grid
    min_pixels = min_region_pixels(grid, config.min_area, config.simplify)
    return [
        stack.enter_context(
            BackgroundVectorizer(
                StreamingVectorizer(
                    grid.width,
                    grid.height,
                    grid.transform,
                    grid.crs,
                    config.threshold,
                    PROBABILITY_BLOCK,
                    panels=run.tiling.panels,
                    min_pixels=min_pixels,
                )
            )
        )
        for _ in config.query_list()
    ]


T = TypeVar("T")


def _into_stitchers(
    run: RunPlan,
    paths: Sequence[Path | None],
    vectorizers: Sequence[BackgroundVectorizer],
    model: ChangeModel,
    fill: Callable[[Sequence[StripStitcher]], T],
) -> T:
    """Run ``fill`` on a stitcher per query, its rows to the query's vectorizer; return its result.

    ``fill`` adds every tile's answers (:func:`predict_tiles`, or the kept scores of a pixel
    score model). The probability raster of a query is written (at ``paths``) only when a mask
    raster is asked for. Closing the stitchers (their last rows) counts as stitching; the rows
    they vectorize count as vectorizing.
    """
    timings = run.timings
    stitch_start, vectorize_start = timings["stitch"], timings["vectorize"]
    with model.session(), contextlib.ExitStack() as stack:
        stitchers = [
            stack.enter_context(_stitcher(run, path, vectorizer))
            for path, vectorizer in zip(paths, vectorizers, strict=True)
        ]
        result = fill(stitchers)
        closing = time.perf_counter()
    timings["stitch"] += time.perf_counter() - closing
    vectorized = timings["vectorize"] - vectorize_start
    timings["stitch"] = max(stitch_start, timings["stitch"] - vectorized)
    return result


def _score_rows_into(
    run: RunPlan,
    paths: Sequence[Path | None],
    vectorizers: Sequence[BackgroundVectorizer],
    model: PixelScoreModel,
    store: ScoreStore,
) -> tuple[int, int]:
    """Hand the rows of a pixel score model's answers to a sink per query (:func:`score_rows`).

    The probability raster of a query is written (at ``paths``) only when a mask raster is asked
    for. The rows it vectorizes count as vectorizing; the rest as stitching.
    """
    timings = run.timings
    stitch_start, vectorize_start = timings["stitch"], timings["vectorize"]
    with model.session(), contextlib.ExitStack() as stack:
        sinks = [
            stack.enter_context(
                RowSink(path, run.grid, timed_rows(timings, "vectorize", _rows_into(vectorizer)))
            )
            for path, vectorizer in zip(paths, vectorizers, strict=True)
        ]
        counts = score_rows(
            model, store, run.tiling, sinks, run.grid, run.area, run.cancel, timings,
            run.config.threshold,
        )  # fmt: skip
    vectorized = timings["vectorize"] - vectorize_start
    timings["stitch"] = max(stitch_start, timings["stitch"] - vectorized)
    return counts


def _stitcher(run: RunPlan, path: Path | None, vectorizer: BackgroundVectorizer) -> StripStitcher:
    """Return the stitcher of one query: rows to ``vectorizer`` (timed), to ``path`` if any."""
    rows_to = timed_rows(run.timings, "vectorize", _rows_into(vectorizer))
    return StripStitcher(path, run.grid, run.tiling, rows_to)


def model_queries(config: DetectConfig) -> list[str | None]:
    """Return the queries the model prepares: None for "any change" (none, or ``any_change``)."""
    return [None if config.any_change or not query else query for query in config.query_list()]


def prepare_model(
    model: ChangeModel, config: DetectConfig, queries: Sequence[str | None] | None = None
) -> None:
    """Give ``model`` the run's queries (:func:`model_queries`) and the threshold of its masks.

    The threshold (:meth:`~mtrs_geo.model_api.ChangeModel.cut_at`) is None when the run writes
    a probability raster: that raster holds every model's own probabilities.
    """
    model.prepare_queries(model_queries(config) if queries is None else queries)
    writes_probabilities = config.mask_out is not None and config.mask_type == "probability"
    model.cut_at(None if writes_probabilities else config.threshold)


def _open_scene(config: DetectConfig, say: MessageCallback) -> Scene:
    """Open and check every image, their dates, common grid and tiles (before the model loads).

    Raises:
        InputError: an unreadable image, an output that is an input's file, images that do not
            fit each other or the (registered) model, a grid or run too large for the machine.

    """
    say(RunMessage("stage", "opening the images"))
    images = _open_images(config, say)
    registered = _registered_info(config.model)
    for before, after in itertools.pairwise(images):
        _check_outputs_against_files(config, before, after)
        check_pair(before, after, registered)
    dates = _image_dates(config)
    grid, area, tiling = _common_grid(images, config)
    return Scene(images, dates, grid, area, tiling, registered)


def _load_model(
    config: DetectConfig, scene: Scene, predictor: Predictor, say: MessageCallback
) -> tuple[ModelInfo, str]:
    """Load the run's model through ``predictor``; check it fits every pair of images.

    A query the model ignores is noted: before the (possibly slow) load for a registered model,
    once loaded for a checkpoint.

    Returns:
        The model's description and the device it runs on.

    Raises:
        ModelError: the model cannot be loaded, or takes another number of bands.

    """
    note = _query_note(config, scene.registered) if scene.registered is not None else None
    if note is not None:
        say(RunMessage("note", note))
    for note in _ignored_words(config):
        say(RunMessage("note", note))

    def check_model(info: ModelInfo) -> None:
        for before, after in itertools.pairwise(scene.images):
            check_pair(before, after, info)
        if scene.registered is None and (note := _query_note(config, info)) is not None:
            say(RunMessage("note", note))

    say(RunMessage("stage", f"loading model {config.model}"))
    return predictor.load(config, check_model, say)


def _predict_intervals(
    run: RunPlan, predictor: Predictor, scene: Scene
) -> list[tuple[int, int, IntervalResult]]:
    """Predict every interval of the scene in time order: ``(first, second, result)`` each."""
    intervals = scene.intervals()
    results = []
    for index, (first, second) in enumerate(intervals):
        if len(intervals) > 1:
            label = scene.label(first, second)
            run.say(RunMessage("stage", f"interval {index + 1} of {len(intervals)}: {label}"))
        done_before = index * scene.tiling.tiles
        before, after = scene.images[first], scene.images[second]
        results.append((first, second, predictor.interval(run, before, after, index, done_before)))
    done = sum(result.tiles_run + result.tiles_skipped for _, _, result in results)
    if run.progress is not None and done < run.total:
        run.progress(run.total, run.total)
    return results


def _answers(
    config: DetectConfig,
    model: str,
    scene: Scene,
    results: Sequence[tuple[int, int, IntervalResult]],
) -> Answers:
    """Gather the polygons of every interval and query into one table, with their attributes."""
    from mtrs_geo.multiquery import combine_tables
    from mtrs_geo.write import change_table

    queries = config.query_list()
    images, dates = scene.images, scene.dates
    tables, rasters, descriptions = [], [], []
    for first, second, result in results:
        if len(images) == 2:  # a pair: the dates of its two images
            when = {"before_date": dates[0], "after_date": dates[1]}
        else:  # a time series: the interval in which the change happened
            when = {"from_date": dates[first], "to_date": dates[second]}
        for label, polygons, path in zip(
            queries, result.polygons, result.probabilities, strict=True
        ):
            tables.append(
                change_table(
                    polygons,
                    query=label,
                    model=model,
                    before=images[first].name,
                    after=images[second].name,
                    min_area_m2=config.min_area,
                    simplify_m=config.simplify,
                    extra={**when, **config.extra_attributes},
                )
            )
            rasters.append(path)
            text = label or "any change"
            if len(images) > 2:  # a time series: the interval too
                text = f"{scene.label(first, second)}: {text}"
            descriptions.append(text)
    return Answers(combine_tables(tables), rasters, descriptions)


def _write_outputs(
    config: DetectConfig, answers: Answers, staged: StagedOutputs, cancel: threading.Event | None
) -> None:
    """Write the polygon table and the mask raster the config asks for, staged for the commit.

    Raises:
        Cancelled: ``cancel`` was set after the polygons were written.

    """
    from mtrs_geo.multiquery import add_query_layers, write_band_cog

    if config.output is not None:
        write_vectors(answers.table, Path(config.output), staged)
        add_query_layers(answers.table, Path(config.output), staged, config.query_list())
        check_cancel(cancel)
    if config.mask_out is not None:
        rasters = [path for path in answers.rasters if path is not None]
        if len(rasters) == 1:
            write_probability_cog(
                rasters[0],
                Path(config.mask_out),
                config.mask_type,
                config.threshold,
                staged,
                description=answers.descriptions[0],
            )
        else:  # a band per query (and interval), described by it
            write_band_cog(
                rasters, answers.descriptions, Path(config.mask_out), config.mask_type,
                config.threshold, staged,
            )  # fmt: skip


def _output_folder(config: DetectConfig) -> Path:
    """Return the folder of the run's first output: its scratch folder goes there."""
    first_output = config.mask_out if config.mask_out is not None else config.outputs()[0]
    return Path(first_output).parent


@contextlib.contextmanager
def _staged_outputs(folder: Path) -> Iterator[StagedOutputs]:
    """Stage the run's outputs (scratch files beside them in ``folder``); clean up at the end.

    Raises:
        OutputError: reading or writing failed for a reason a user can act on (a full disk under
            the scratch files, a vanished scratch folder); the files it would replace are kept.

    """
    staged = StagedOutputs()
    try:
        yield staged
    except (OSError, rasterio.errors.RasterioError) as exc:
        if isinstance(exc, MtrsError):
            raise
        staged.check_scratch()  # a vanished scratch folder, said in plain words
        failure = write_failure(exc, folder)  # a full disk under the scratch raster, say
        if failure is not None:
            raise failure from exc
        raise
    finally:
        staged.close()


# What polygons need, imported while a run sets up (:func:`_import_vectorizing_libraries`).
VECTORIZING_MODULES = ("geopandas", "scipy.ndimage")


def _import_vectorizing_libraries() -> threading.Thread:
    """Import what polygons need (geopandas, scipy's labelling) in a thread, while the run sets up.

    A run imports them only when its first rows are vectorized, where they took 0.4-0.6 s of the
    loop; in a thread they load while the scene opens and the model loads (a later import waits
    for this one to finish). A tiled run waits for the thread before its first tile
    (:meth:`RunPlan.finish_imports`): importing is Python holding the GIL, and left to run into
    the tile loop it slowed the network's two threads (2048^2, ``mtrefseg-r1``, 2 cores, four
    interleaved pairs of runs: 23.0 tiles/s and 7.05 s in all with the imports running into the
    loop, 26.8 tiles/s and 6.43 s in all waiting for them). A pixel score pass (``cva``) reads and
    scores beside them and waits before its rows of answers.
    """

    def load() -> None:
        for name in VECTORIZING_MODULES:
            importlib.import_module(name)

    thread = threading.Thread(target=load, name="mtrs-imports", daemon=True)
    thread.start()
    return thread


def _detect(
    config: DetectConfig,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    say: MessageCallback,
    predictor: Predictor,
) -> DetectResult:
    """Run :func:`detect` (inside its GDAL environment): open, load, predict, gather, write."""
    start = time.perf_counter()
    timings = dict.fromkeys(("setup", "read", "model", "stitch", "vectorize", "write"), 0.0)
    # Everything a user can get wrong is checked before the model loads or a tile is read.
    config.check()
    imports = _import_vectorizing_libraries()
    scene = _open_scene(config, say)
    info, device = _load_model(config, scene, predictor, say)
    check_cancel(cancel)
    intervals = len(scene.intervals())
    total = scene.tiling.tiles * intervals
    folder = _output_folder(config)
    with _staged_outputs(folder) as staged:
        run = RunPlan(
            config, scene.grid, scene.area, scene.tiling, staged.scratch(folder), timings,
            progress, cancel, say, total, imports,
        )  # fmt: skip
        timings["setup"] += time.perf_counter() - start  # the intervals add samples, calibration
        results = _predict_intervals(run, predictor, scene)
        with timed(timings, "vectorize"):
            answers = _answers(config, info.name, scene, results)
        check_cancel(cancel)
        with timed(timings, "write"):
            _write_outputs(config, answers, staged, cancel)
            # The commit: from here on the run finishes (a cancel is too late), and before it
            # every file the outputs would replace is untouched.
            begin_commit(cancel)
            outputs = staged.commit()
    queries = config.query_list()
    return DetectResult(
        tiles_total=total,
        tiles_run=sum(result.tiles_run for _, _, result in results),
        tiles_skipped=sum(result.tiles_skipped for _, _, result in results),
        polygons=len(answers.table),
        seconds=time.perf_counter() - start,
        outputs=outputs,
        timings=timings,
        grid=scene.pair,
        model=info.name,
        device=device,
        query_used=any(queries) and not config.any_change and info.query_aware,
        queries=queries,
        intervals=intervals,
    )
