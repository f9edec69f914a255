"""cva reads every pixel once: scores kept during one pass, then stitched (mtrs_geo.score_pass)."""

from __future__ import annotations

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
from mtrs_geo import align
from mtrs_geo.baselines.cva import build_model
from mtrs_geo.config import DetectConfig
from mtrs_geo.model_api import ChangeModel, PixelScoreModel
from mtrs_geo.pipeline import detect
from mtrs_geo.score_pass import ScoreStore, tile_rows


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


def _outputs(pair: ScenePair, out: Path, model: ChangeModel, **options: Any) -> dict[str, Any]:
    """Run cva on ``pair`` with ``model``; return its probabilities, polygons and tile counts."""
    out.mkdir()
    config = DetectConfig(
        before=pair.before,
        after=pair.after,
        output=out / "changes.gpkg",
        mask_out=out / "probability.tif",
        model="cva",
        **options,
    )
    result = detect(config, models=lambda name: model)
    with rasterio.open(out / "probability.tif") as src:
        probability = src.read(1)
    table = pyogrio.read_dataframe(out / "changes.gpkg")
    return {
        "probability": probability.view(np.uint32),  # compared bit for bit
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
    assert np.array_equal(one["probability"], other["probability"])
    assert one["wkb"] == other["wkb"]
    assert one["attributes"] == other["attributes"]
    assert one["tiles"] == other["tiles"]


def test_cva_is_a_pixel_score_model() -> None:
    assert isinstance(build_model(), PixelScoreModel)


@pytest.mark.parametrize("in_memory", [True, False])
def test_reading_each_pixel_once_gives_the_outputs_of_predicting_every_tile(
    bordered_pair: ScenePair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool
) -> None:
    if not in_memory:  # the scores go to a file in the scratch folder
        monkeypatch.setattr(score_pass, "SCORE_MEMORY_BYTES", 0)
    options = {"tile_size": 96, "overlap": 24, "panel_width": 200}
    once = _outputs(bordered_pair, tmp_path / "once", build_model(), **options)
    tiled = _outputs(bordered_pair, tmp_path / "tiled", TilePredictedCva(), **options)
    assert len(once["wkb"]) > 0
    _assert_same(once, tiled)


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


def test_tiles_come_a_row_of_a_panel_at_a_time() -> None:
    from mtrs_geo.grid import Panel

    windows = tuple(Window(col, row, 10, 10) for row in (0, 8) for col in (0, 8))
    rows = list(tile_rows(Panel(0, 18, 18, windows)))
    assert [[int(w.col_off) for w in row] for row in rows] == [[0, 8], [0, 8]]
    assert [int(row[0].row_off) for row in rows] == [0, 8]
