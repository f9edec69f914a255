"""One scene split into column panels: what each worker of a cluster computes, and how it is joined.

A single process predicts a scene panel by panel (:func:`mtrs_geo.grid.panel_layout`); what one
panel hands the next is (1) the scene statistics and the model's calibration, computed once, (2)
the weighted sums of the columns two panels share (the tile overlap), (3) the regions cut by the
seam between them. A cluster splits that run into tasks that move no pixels:

- :func:`scene_setup` reads the scene samples once (statistics, the model's calibration on them);
  :func:`scene_part_summary` and :func:`settle_scene` split a model's pass over the whole scene
  (cva's histogram) into parts summed exactly;
- :func:`predict_panel` reads its panel's windows itself, and also predicts the earlier panels'
  tiles that reach into its columns (:func:`halo_panels`, about one tile column): its shared
  columns start from the same weighted sums, added in the same order, as in one process. It
  polygonizes its own columns (:class:`mtrs_geo.vectorize.PanelVectorizer`) and, for a mask raster,
  writes them to the run's scratch folder (which must be on storage every worker shares);
- the client joins the regions across the seams (:func:`join_panels`) and assembles the mask
  raster (:func:`assemble_probability`).

The polygons, their attributes and the raster equal the single process's when the model's answer
for a tile does not depend on the other tiles of its batch (cva, or any model at batch size 1); a
torch model's answers may differ in the last bits between batch compositions.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from mtrs_geo.aoi import AreaOfInterest
from mtrs_geo.cancel import check_cancel
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import ModelError, OutputError
from mtrs_geo.grid import Grid, Panel, Tiling, scene_tiling
from mtrs_geo.model_api import ChangeModel, PixelScoreModel
from mtrs_geo.normalize import BandStats
from mtrs_geo.pipeline import (
    predict_tiles,
    prepare_model,
    run_environment,
    timed,
    timed_rows,
)
from mtrs_geo.probability_raster import PROBABILITY_BLOCK, probability_profile
from mtrs_geo.read import RasterInfo
from mtrs_geo.scene_samples import calibrate_on_samples, read_scene_samples
from mtrs_geo.stitch import StripStitcher
from mtrs_geo.tiling import TileBatch, TileStream
from mtrs_geo.vectorize import PanelVectorizer, Region, SeamJoiner, panel_strips

# (model name or checkpoint folder, device) -> the model, loaded and moved once per process; the
# tasks predict with a copy (their queries and calibration are their own).
ModelSource = Callable[[str, str], ChangeModel]


@dataclass(frozen=True)
class SceneJob:
    """What every task of one interval (a pair of dates) needs: options, images, grid; no pixels."""

    config: DetectConfig
    before: RasterInfo
    after: RasterInfo
    grid: Grid
    area: AreaOfInterest | None
    interval: int  # 0: the first pair of dates
    scratch: Path  # the run's scratch folder (panel rasters of a mask output go there)

    def tiling(self) -> Tiling:
        """Return the run's tiling (the client's, built again here: a job carries no windows)."""
        config = self.config
        return scene_tiling(self.grid, config.tile_size, config.overlap, config.panel_width)


@dataclass(frozen=True)
class SceneSetup:
    """The scene statistics and the model's calibration every panel of an interval predicts with."""

    stats: tuple[BandStats, BandStats]  # before, after
    calibration: dict[str, Any]
    scene_pass: bool  # the model still needs scene_summary() of every part, then settle_scene()


@dataclass(frozen=True)
class PanelResult:
    """What a worker hands back for one panel: regions per query, counts, seconds, raster files."""

    panel: int
    regions: list[list[Region]]  # per query, pixel coordinates of the common grid
    tiles_run: int
    tiles_skipped: int
    timings: dict[str, float]  # read, model, stitch, vectorize (seconds on the worker)
    rasters: list[Path | None]  # per query: the panel's probabilities (mask runs only)


def check_splittable(model: ChangeModel) -> None:
    """Refuse a model whose calibration cannot be handed from one process to another.

    Raises:
        ModelError: the model calibrates on the scene but does not implement
            :meth:`~mtrs_geo.model_api.ChangeModel.calibration`, or streams its scene pass through
            its own ``calibrate_scene`` instead of ``scene_summary``/``settle_scene``.

    """
    own_pass = type(model).calibrate_scene is not ChangeModel.calibrate_scene
    if model.calibration() is None or (model.scene_pass and own_pass):
        raise ModelError(
            f"model {model.info.name!r} calibrates on the scene in a way it cannot hand to other "
            "processes: run it without a scheduler"
        )


def _model(models: ModelSource, config: DetectConfig, calibration: dict[str, Any] | None) -> Any:
    """Return a copy of the process's model with the run's queries and ``calibration``."""
    model = copy.copy(models(config.model, config.device))
    prepare_model(model, config)
    if calibration is not None:
        model.restore_calibration(calibration)
    return model


def scene_setup(
    job: SceneJob, models: ModelSource, previous: dict[str, Any] | None = None
) -> SceneSetup:
    """Read the scene samples: statistics of both images, the model calibrated on them.

    ``previous`` is the calibration of the interval before (a model keeps it where the samples
    show nothing, as in one process).
    """
    config = job.config
    with run_environment(config):
        samples = read_scene_samples(job.before, job.after, job.grid, config.tile_size)
    model = _model(models, config, previous)
    check_splittable(model)
    calibrate_on_samples(model, samples)
    calibration = model.calibration()
    assert calibration is not None  # check_splittable
    return SceneSetup(samples.stats, calibration, model.scene_pass)


def _pass_batches(
    job: SceneJob, setup: SceneSetup, part: int, cancel: threading.Event | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    tiling = job.tiling()
    windows = tiling.pass_panels[part].windows
    stream = TileStream(
        job.before, job.after, job.grid, windows, tiling.tile_size, job.config.batch_size
    )
    try:
        for batch in stream.batches(*setup.stats):
            check_cancel(cancel)
            yield batch.before, batch.after, batch.valid
    finally:
        stream.close()


def scene_part_summary(
    job: SceneJob,
    setup: SceneSetup,
    part: int,
    models: ModelSource,
    cancel: threading.Event | None = None,
) -> Any:
    """Return the model's summary of one part of its pass over the scene (``pass_panels``)."""
    check_cancel(cancel)
    model = _model(models, job.config, setup.calibration)
    with run_environment(job.config):
        return model.scene_summary(_pass_batches(job, setup, part, cancel))


def settle_scene(
    job: SceneJob, setup: SceneSetup, summaries: Sequence[Any], models: ModelSource
) -> SceneSetup:
    """Calibrate the model on the summaries of every part; the setup the panels predict with."""
    model = _model(models, job.config, setup.calibration)
    model.settle_scene(summaries)
    calibration = model.calibration()
    assert calibration is not None  # check_splittable
    return replace(setup, calibration=calibration, scene_pass=False)


def halo_panels(panels: Sequence[Panel], index: int) -> list[Panel]:
    """Return the earlier panels, cut to their tiles that reach into panel ``index``'s columns.

    Stitched before the panel's own tiles, they give the columns it shares with the panel before
    the weighted sums one process carries across the seam (those tiles, added in the same order).
    Usually the last tile column of the panel before; more when the overlap passes half a tile.
    """
    start = panels[index].col_off
    reach = [
        tuple(w for w in panel.windows if w.col_off + w.width > start) for panel in panels[:index]
    ]
    first = next((j for j, windows in enumerate(reach) if windows), index)
    return [replace(panels[j], windows=reach[j]) for j in range(first, index)]


def panel_raster_path(job: SceneJob, query: int, panel: int) -> Path:
    """Where a worker writes a panel's probabilities for a mask output (the run's scratch)."""
    return job.scratch / "panels" / f"probability-{job.interval}-{query}-{panel}.tif"


class _PanelRaster:
    """A panel's own columns of probabilities, written row by row, renamed when complete."""

    def __init__(self, path: Path, grid: Grid, panel: Panel) -> None:
        self.path = path
        self._partial = path.with_name(f".{uuid.uuid4().hex[:8]}-{path.name}")
        window = Window(panel.col_off, 0, panel.own_width, grid.height)
        own = Grid(grid.crs, grid.window_transform(window), panel.own_width, grid.height)
        self._dst = rasterio.open(self._partial, "w", **probability_profile(own))

    def write(self, first_row: int, rows: np.ndarray) -> None:
        height, width = rows.shape
        self._dst.write(rows, 1, window=Window(0, first_row, width, height))

    def __enter__(self) -> _PanelRaster:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._dst.close()
        if exc_type is None:
            os.replace(self._partial, self.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._partial.unlink()


def _panel_rasters(job: SceneJob, index: int, queries: int) -> list[Path | None]:
    if job.config.mask_out is None:
        return [None] * queries
    folder = job.scratch / "panels"
    if not job.scratch.is_dir():
        raise OutputError(
            f"the run's scratch folder {job.scratch} is not on this worker "
            f"({os.uname().nodename}): a mask raster made on a cluster needs its folder on "
            "storage every worker shares"
        )
    folder.mkdir(exist_ok=True)
    return [panel_raster_path(job, q, index) for q in range(queries)]


def predict_panel(
    job: SceneJob,
    setup: SceneSetup,
    index: int,
    models: ModelSource,
    cancel: threading.Event | None = None,
) -> PanelResult:
    """Predict, stitch and polygonize panel ``index`` (and write its probabilities for a mask).

    Raises:
        OutputError: a mask raster is asked for and the scratch folder is not on this machine.
        Cancelled: ``cancel`` was set.

    """
    config, grid = job.config, job.grid
    from mtrs_geo.areas import min_region_pixels

    check_cancel(cancel)  # a task that starts after its run was cancelled stops at once
    queries = len(config.query_list())
    rasters = _panel_rasters(job, index, queries)  # first: a folder not shared fails at once
    tiling = job.tiling()
    panels = tiling.panels
    panel = panels[index]
    # The earlier panels' tiles that reach into this panel's columns, then the panel.
    layout = replace(tiling, panels=(*halo_panels(panels, index), panel))
    model = _model(models, config, setup.calibration)
    strips = panel_strips(panels, grid.height, PROBABILITY_BLOCK)
    min_pixels = min_region_pixels(grid, config.min_area, config.simplify)
    vectorizers = [
        PanelVectorizer(panels, index, strips, config.threshold, min_pixels=min_pixels)
        for _ in range(queries)
    ]
    timings = dict.fromkeys(("read", "model", "stitch", "vectorize"), 0.0)
    own_tiles = 0

    def count_own(batch: TileBatch) -> None:
        nonlocal own_tiles
        own_tiles += sum(window.col_off >= panel.col_off for window in batch.windows)

    def rows_to(
        vectorizer: PanelVectorizer, raster: _PanelRaster | None
    ) -> Callable[[int, int, np.ndarray], None]:
        def on_rows(first_row: int, first_col: int, rows: np.ndarray) -> None:
            if first_col != panel.col_off:
                return  # a halo panel's own columns: another task's, unfinished here
            vectorizer.add_rows(first_row, rows)
            if raster is not None:
                raster.write(first_row, rows)

        return timed_rows(timings, "vectorize", on_rows)

    windows, tile_size = layout.windows, layout.tile_size
    stream = TileStream(
        job.before, job.after, grid, windows, tile_size, config.batch_size, config.prefetch
    )
    try:
        with run_environment(config), model.session(), contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(_PanelRaster(path, grid, panel)) if path is not None else None
                for path in rasters
            ]
            # A pixel score model's tiles give a pixel one answer: kept as it is, as one
            # process keeps it (mtrs_geo.score_pass.score_rows), not blended.
            blend = not isinstance(model, PixelScoreModel)
            stitchers = [
                stack.enter_context(
                    StripStitcher(None, grid, layout, rows_to(vectorizer, writer), blend=blend)
                )
                for vectorizer, writer in zip(vectorizers, writers, strict=True)
            ]
            predict_tiles(
                model, stream, setup.stats, stitchers, grid, job.area, cancel, timings, count_own
            )
    finally:
        stream.close()
    timings["stitch"] = max(0.0, timings["stitch"] - timings["vectorize"])
    timings["read"] = stream.read_seconds
    with timed(timings, "vectorize"):
        regions = [vectorizer.regions() for vectorizer in vectorizers]
    skipped = len(panel.windows) - own_tiles
    return PanelResult(index, regions, own_tiles, skipped, timings, rasters)


def join_panels(
    job: SceneJob, panels: Sequence[Panel], results: Sequence[PanelResult]
) -> list[Any]:
    """Join the regions of ``panels`` (the run's) across their seams: a polygon table per query."""
    from mtrs_geo.areas import min_region_pixels

    grid, config = job.grid, job.config
    ordered = sorted(results, key=lambda result: result.panel)
    if [result.panel for result in ordered] != list(range(len(panels))):
        raise ValueError(f"{len(ordered)} panel results for {len(panels)} panels")
    min_pixels = min_region_pixels(grid, config.min_area, config.simplify)
    tables = []
    for query in range(len(config.query_list())):
        joiner = SeamJoiner(panels, min_pixels)
        for result in ordered:
            joiner.add_panel(result.regions[query])
        tables.append(joiner.table(grid.transform, grid.crs))
    return tables


def assemble_probability(
    grid: Grid, panels: Sequence[Panel], parts: Sequence[Path], destination: Path
) -> Path:
    """Write the panels' probability rasters side by side into one GeoTIFF on ``grid``.

    Row strips of whole output blocks, every panel's part of a strip before the next strip: each
    block of the file is written once.
    """
    with rasterio.open(destination, "w", **probability_profile(grid)) as dst:
        sources = [rasterio.open(path) for path in parts]
        try:
            for row in range(0, grid.height, PROBABILITY_BLOCK):
                height = min(PROBABILITY_BLOCK, grid.height - row)
                for panel, src in zip(panels, sources, strict=True):
                    rows = src.read(1, window=Window(0, row, panel.own_width, height))
                    dst.write(rows, 1, window=Window(panel.col_off, row, panel.own_width, height))
        finally:
            for src in sources:
                src.close()
    return destination
