from pathlib import Path

import geopandas as gpd
import pytest
from scenes import BASE_CRS, make_pair

from mtrs_geo.errors import InputError
from mtrs_geo.models.evaluate import evaluate_splits, is_scene_split


def _scene(folder: Path) -> None:
    pair = make_pair(folder)
    queries = ["new buildings", "new buildings", "new roads", "new roads"]
    gpd.GeoDataFrame(
        {"query": queries[: len(pair.changes)]}, geometry=pair.changes, crs=BASE_CRS
    ).to_file(folder / "changes.gpkg")


def test_georeferenced_scenes_run_through_the_engine_one_sample_per_query(tmp_path: Path) -> None:
    _scene(tmp_path / "val" / "scene1")
    assert is_scene_split(tmp_path, "val")
    results, table = evaluate_splits(tmp_path, ["val"], model="cva@any")
    metrics = results["val"]
    assert metrics["samples"] == 2 and metrics["empty_gt"] == 0
    # cva finds every planted change, so each query's reference is inside its prediction:
    # the any-change prediction covers both queries' polygons, each IoU is about half.
    assert 20.0 < metrics["mIoU"] < 80.0
    assert "| val |" in table


def test_scenes_cannot_be_scored_from_a_predictions_folder(tmp_path: Path) -> None:
    _scene(tmp_path / "val" / "scene1")
    with pytest.raises(InputError, match="georeferenced scenes"):
        evaluate_splits(tmp_path, ["val"], predictions=tmp_path)


def test_scenes_run_at_the_tile_size_mtrs_detect_picks_for_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtrs_geo.pipeline as pipeline
    from mtrs_geo.config import model_tile_size

    class Seen(Exception):
        """Raised by the spy once the engine's configuration is seen (no model runs)."""

    _scene(tmp_path / "val" / "scene1")
    tiles: list[int] = []

    def spy(config, *args, **kwargs):  # type: ignore[no-untyped-def]
        tiles.append(config.tile_size)
        raise Seen

    monkeypatch.setattr(pipeline, "detect", spy)
    for spec in ("mtrefseg-r1@any", "cva@any"):
        with pytest.raises(Seen):
            evaluate_splits(tmp_path, ["val"], model=spec)
    assert tiles == [model_tile_size("mtrefseg-r1"), model_tile_size("cva")]  # 256, 512
