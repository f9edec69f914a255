"""cva reads every pixel once: scores kept during one pass, then rows of answers (score_pass)."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.windows import Window
from scenes import ImageSpec, ScenePair, default_extent, make_pair

import mtrs_geo.score_pass as score_pass
from mtrs_geo import align, pipeline
from mtrs_geo.baselines.cva import ChangeVectorAnalysis, build_model
from mtrs_geo.cancel import Cancelled
from mtrs_geo.config import DetectConfig
from mtrs_geo.grid import Grid, common_grid, tile_windows
from mtrs_geo.model_api import ChangeModel, PixelScoreModel
from mtrs_geo.normalize import BandStats
from mtrs_geo.pipeline import detect
from mtrs_geo.probability_raster import PROBABILITY_NODATA
from mtrs_geo.read import open_raster
from mtrs_geo.score_pass import ScoreStore, pass_shares, score_scene, tile_rows
from mtrs_geo.tiling import TileStream


class TilePredictedCva(ChangeModel):
    """cva through the engine's general path: a scene pass, then every overlapping tile read."""

    scene_pass = True

    def __init__(self) -> None:
        self.inner = build_model()
        self.info = self.inner.info

    def calibrate(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> None:
        self.inner.calibrate(before, after, valid)

    def scene_summary(self, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Any:
        return self.inner.scene_summary(batches)

    def settle_scene(self, summaries: Sequence[Any]) -> None:
        self.inner.settle_scene(summaries)

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return self.inner.predict(before, after)


def _outputs(
    pair: ScenePair, out: Path, model: ChangeModel, raster: bool = True, **options: Any
) -> dict[str, Any]:
    """Run cva on ``pair`` with ``model``; return its probabilities, polygons and tile counts."""
    out.mkdir()
    config = DetectConfig(
        before=pair.before,
        after=pair.after,
        output=out / "changes.gpkg",
        mask_out=out / "probability.tif" if raster else None,
        model="cva",
        **options,
    )
    result = detect(config, models=lambda name: model)
    probability = None
    if raster:
        with rasterio.open(out / "probability.tif") as src:
            probability = src.read(1)
    table = pyogrio.read_dataframe(out / "changes.gpkg")
    return {
        "probability": probability,
        "wkb": [geometry.wkb for geometry in table.geometry],
        "attributes": table.drop(columns="geometry").to_dict("list"),
        "tiles": (result.tiles_run, result.tiles_skipped),
    }


@pytest.fixture
def bordered_pair(tmp_path: Path) -> ScenePair:
    """A 384^2 pair with a nodata border (pixels the pass leaves out)."""
    spec = ImageSpec(nodata=0, nodata_border=40)
    extent = default_extent(3840.0)
    return make_pair(tmp_path / "scene", before=spec, after=spec, extent=extent)


def _assert_same(one: dict[str, Any], other: dict[str, Any]) -> None:
    """The same outputs, up to the float rounding of the tile path's blend of equal answers."""
    if one["probability"] is not None:
        np.testing.assert_allclose(one["probability"], other["probability"], rtol=0, atol=1e-6)
        nodata = one["probability"] == PROBABILITY_NODATA
        assert np.array_equal(nodata, other["probability"] == PROBABILITY_NODATA)
    assert one["wkb"] == other["wkb"]
    assert one["attributes"].keys() == other["attributes"].keys()
    for name, values in one["attributes"].items():
        if name == "mean_score":
            np.testing.assert_allclose(values, other["attributes"][name], rtol=0, atol=1e-6)
        else:
            assert values == other["attributes"][name]
    assert one["tiles"] == other["tiles"]


def test_cva_is_a_pixel_score_model() -> None:
    assert isinstance(build_model(), PixelScoreModel)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("border", [40, 0])
def test_reading_each_pixel_once_gives_the_outputs_of_predicting_every_tile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool, border: int
) -> None:
    if not in_memory:  # the scores go to a file in the scratch folder
        monkeypatch.setattr(score_pass, "SCORE_MEMORY_BYTES", 0)
    # With a nodata border every strip holds nodata; without one, none does (no NaN looked for).
    spec = ImageSpec(nodata=0, nodata_border=border) if border else ImageSpec()
    pair = make_pair(tmp_path / "scene", before=spec, after=spec, extent=default_extent(3840.0))
    options = {"tile_size": 96, "overlap": 24, "panel_width": 200}
    outputs = {}
    for model, name in ((build_model(), "once"), (TilePredictedCva(), "tiled")):
        for raster in (True, False):  # polygons alone: only the changed pixels' probabilities
            folder = tmp_path / f"{name}-{raster}"
            outputs[name, raster] = _outputs(pair, folder, model, raster=raster, **options)
    assert len(outputs["once", True]["wkb"]) > 0
    _assert_same(outputs["once", True], outputs["tiled", True])
    _assert_same(outputs["once", False], outputs["tiled", False])


class CountingCva(ChangeVectorAnalysis):
    """cva that counts the pixels it is asked the probability of."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        self.asked += scores.size
        return super().probabilities(scores)


def test_polygons_alone_need_the_probabilities_of_the_changed_pixels_only(
    bordered_pair: ScenePair, tmp_path: Path
) -> None:
    options = {"tile_size": 96, "overlap": 24, "panel_width": 200}
    counting = CountingCva()
    once = _outputs(bordered_pair, tmp_path / "once", counting, raster=False, **options)
    tiled = _outputs(bordered_pair, tmp_path / "tiled", TilePredictedCva(), raster=False, **options)
    assert len(once["wkb"]) > 0
    _assert_same(once, tiled)
    assert 0 < counting.asked < 384 * 384 / 4  # the scene's changed pixels and a margin


def test_cva_probabilities_stay_below_a_level_under_its_min_score() -> None:
    model = ChangeVectorAnalysis()
    model.threshold, model.scale = 0.3, 0.02
    for level in (0.1, 0.5, 0.9):
        cut = model.min_score(level)
        below = np.linspace(cut - 0.2, cut, 1000, dtype=np.float32)[:-1]
        assert (model.probabilities(below.copy()) < level).all()
        step = np.float32(0.01 * model.scale)
        above = np.float32(cut) + step * np.arange(1, 10, dtype=np.float32)
        assert (model.probabilities(above) >= level).any()
    model.threshold = math.inf
    assert model.min_score(0.5) == math.inf


def test_an_area_of_interest_gives_the_outputs_of_predicting_every_tile(
    bordered_pair: ScenePair, tmp_path: Path
) -> None:
    xmin, ymin, xmax, ymax = bordered_pair.extent
    extent = (xmin + 300.0, ymin + 500.0, xmax - 700.0, ymax - 200.0)
    options = {"tile_size": 64, "overlap": 16, "extent": extent, "extent_crs": "EPSG:32633"}
    once = _outputs(bordered_pair, tmp_path / "once", build_model(), **options)
    tiled = _outputs(bordered_pair, tmp_path / "tiled", TilePredictedCva(), **options)
    _assert_same(once, tiled)


def test_the_tile_reader_reads_every_pixel_of_both_images_once(
    bordered_pair: ScenePair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[int] = []
    original = align.AlignedReader.read_native

    def counted(self: align.AlignedReader, window: Window, out: Any = None) -> Any:
        if threading.current_thread().name == "mtrs-tile-reader":
            read.append(int(window.width) * int(window.height))
        return original(self, window, out)

    monkeypatch.setattr(align.AlignedReader, "read_native", counted)
    config = DetectConfig(
        before=bordered_pair.before,
        after=bordered_pair.after,
        output=tmp_path / "changes.gpkg",
        model="cva",
        tile_size=96,
        overlap=24,
    )
    result = detect(config)
    assert result.tiles_run > 0
    assert sum(read) == 2 * 384 * 384


def test_a_score_file_round_trips_and_is_removed(tmp_path: Path) -> None:
    store = ScoreStore(5, 7, tmp_path, memory_bytes=0)
    assert not store.in_memory and store.path is not None and store.path.exists()
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    valid = np.ones((3, 4), dtype=bool)
    valid[0, 0] = False
    store.write(Window(2, 1, 4, 3), scores, valid)
    store.write_missing(Window(0, 0, 2, 5))
    got = store.read(1, 2, np.empty((3, 4), np.float32))
    assert np.isnan(got[0, 0]) and np.array_equal(got.ravel()[1:], scores.ravel()[1:])
    assert np.isnan(store.read(0, 0, np.empty((5, 2), np.float32))).all()
    path = store.path
    store.close()
    assert not path.exists()


def test_the_store_knows_the_blocks_where_every_pixel_has_a_score(tmp_path: Path) -> None:
    store = ScoreStore(8, 8, tmp_path)
    full = np.ones((4, 4), dtype=bool)
    holed = full.copy()
    holed[3, 3] = False
    store.write(Window(0, 0, 4, 4), np.zeros((4, 4), np.float32), full)
    store.write(Window(4, 0, 4, 4), np.zeros((4, 4), np.float32), holed)
    store.write_missing(Window(0, 4, 4, 4))
    assert store.all_valid(0, 0, 4, 4)
    assert not store.all_valid(0, 0, 4, 5)  # reaches into the holed window
    assert not store.all_valid(4, 0, 1, 1)  # the missing window
    assert store.all_valid(4, 4, 4, 4)  # never written with a hole


def test_tiles_come_a_row_of_a_panel_at_a_time() -> None:
    from mtrs_geo.grid import Panel

    windows = tuple(Window(col, row, 10, 10) for row in (0, 8) for col in (0, 8))
    rows = list(tile_rows(Panel(0, 18, 18, windows)))
    assert [[int(w.col_off) for w in row] for row in rows] == [[0, 8], [0, 8]]
    assert [int(row[0].row_off) for row in rows] == [0, 8]


def _pass_streams(pair: ScenePair, shares: int) -> tuple[list[TileStream], Grid]:
    """Streams over a 96-pixel tiling of ``pair``'s grid without overlap, dealt to ``shares``."""
    before, after = open_raster(pair.before), open_raster(pair.after)
    grid = common_grid(before.grid, after.grid)
    windows = tile_windows(grid.width, grid.height, 96, 0)
    streams = [
        TileStream(before, after, grid, share, 96, 2, prefetch=2)
        for share in pass_shares(windows, shares)
    ]
    return streams, grid


def _scored(
    pair: ScenePair, folder: Path, shares: int, **options: Any
) -> tuple[np.ndarray, Any, list[int]]:
    """The kept scores, the settled threshold and the progress of a pass in ``shares`` workers."""
    streams, grid = _pass_streams(pair, shares)
    model = ChangeVectorAnalysis()
    seen: list[int] = []
    timings = {"model": 0.0}
    with ScoreStore(grid.height, grid.width, folder, **options) as store:
        score_scene(model, streams, (STATS, STATS), store, None, timings, seen.append)
        scores = store.read(0, 0, np.empty((grid.height, grid.width), np.float32))
    return scores, model.calibration(), seen


STATS = BandStats(low=(30.0, 30.0, 30.0), high=(220.0, 220.0, 220.0))


def test_windows_are_dealt_to_the_workers_in_turn() -> None:
    windows = [Window(col, 0, 1, 1) for col in range(5)]
    assert pass_shares(windows, 2) == [windows[0::2], windows[1::2]]
    assert pass_shares(windows[:1], 2) == [windows[:1]]


@pytest.mark.parametrize("memory_bytes", [None, 0])
def test_scoring_in_two_workers_keeps_the_scores_and_calibration_of_one(
    bordered_pair: ScenePair, tmp_path: Path, memory_bytes: int | None
) -> None:
    one, settled_one, seen_one = _scored(bordered_pair, tmp_path, 1, memory_bytes=memory_bytes)
    two, settled_two, seen_two = _scored(bordered_pair, tmp_path, 2, memory_bytes=memory_bytes)
    assert np.array_equal(one.view(np.uint32), two.view(np.uint32))  # NaN where not valid too
    assert np.isnan(one).any() and not np.isnan(one).all()
    assert settled_one == settled_two
    assert seen_one[-1] == seen_two[-1] and seen_two == sorted(seen_two)


def test_an_error_in_a_worker_reaches_the_caller_and_no_thread_is_left(
    bordered_pair: ScenePair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ChangeVectorAnalysis()
    calls = 0

    def failing(before: np.ndarray, after: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls >= 3:  # both workers may count at once
            raise RuntimeError("scoring failed")
        return ChangeVectorAnalysis().scores(before, after)

    monkeypatch.setattr(model, "scores", failing)
    streams, grid = _pass_streams(bordered_pair, 2)
    with (
        ScoreStore(grid.height, grid.width, tmp_path) as store,
        pytest.raises(RuntimeError, match="scoring failed"),
    ):
        score_scene(model, streams, (STATS, STATS), store, None, {"model": 0.0})
    assert not any(t.name.startswith(("mtrs-score", "mtrs-tile")) for t in threading.enumerate())


def test_a_cancel_stops_the_workers_at_the_next_batch(
    bordered_pair: ScenePair, tmp_path: Path
) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        cancel.set()

    streams, grid = _pass_streams(bordered_pair, 2)
    with ScoreStore(grid.height, grid.width, tmp_path) as store, pytest.raises(Cancelled):
        score_scene(
            ChangeVectorAnalysis(), streams, (STATS, STATS), store, cancel, {"model": 0.0}, progress
        )
    assert seen == [2]  # one batch of two windows, then no more
    assert not any(t.name.startswith(("mtrs-score", "mtrs-tile")) for t in threading.enumerate())


@pytest.mark.parametrize("tiled", [False, True])
def test_the_polygon_libraries_are_imported_before_they_are_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiled: bool
) -> None:
    # A tiled run waits for them before its first tile (importing holds the GIL the network's
    # threads need); a pixel score pass reads and scores beside them, and its rows wait.
    # A slow stand-in for geopandas: importing it takes 0.3 s, then it says it is done.
    (tmp_path / "slow_polygon_library.py").write_text("import time\ntime.sleep(0.3)\ndone = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_polygon_library", raising=False)
    monkeypatch.setattr(pipeline, "VECTORIZING_MODULES", ("slow_polygon_library",))
    model = TilePredictedCva() if tiled else build_model()
    seen: list[bool] = []
    asked = "predict_queries" if tiled else "probabilities"  # the first tile; the rows
    first = getattr(model, asked)

    def watched(*args: Any) -> Any:
        module = sys.modules.get("slow_polygon_library")
        seen.append(getattr(module, "done", False))
        return first(*args)

    monkeypatch.setattr(model, asked, watched)
    pair = make_pair(tmp_path / "scene", extent=default_extent(1920.0))
    _outputs(pair, tmp_path / "out", model, tile_size=96, overlap=24)
    assert seen and all(seen)
