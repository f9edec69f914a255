"""The engine's tile size defaults to the model's own (its checkpoint's inference_tile_size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtrs_geo.config import DEFAULT_TILE_SIZE, TILE_SIZE_KEY, DetectConfig, model_tile_size


def _checkpoint(folder: Path, settings: dict[str, object]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


def test_a_model_without_checkpoint_gets_the_engine_default() -> None:
    assert model_tile_size("cva") == DEFAULT_TILE_SIZE
    assert DetectConfig("a.tif", "b.tif", model="cva").tile_size == DEFAULT_TILE_SIZE


def test_a_checkpoint_names_its_tile_size(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "ckpt", {TILE_SIZE_KEY: 320, "model_type": "x"})
    assert DetectConfig("a.tif", "b.tif", model=str(folder)).tile_size == 320


def test_an_explicit_tile_size_wins(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "ckpt", {TILE_SIZE_KEY: 320})
    assert DetectConfig("a.tif", "b.tif", model=str(folder), tile_size=1024).tile_size == 1024


@pytest.mark.parametrize("value", [None, "big", 8, 100_000])
def test_a_missing_or_unusable_size_falls_back(tmp_path: Path, value: object) -> None:
    folder = _checkpoint(tmp_path / "ckpt", {TILE_SIZE_KEY: value})
    assert model_tile_size(str(folder)) == DEFAULT_TILE_SIZE


def test_the_bundled_checkpoint_asks_for_tiles_near_its_training_crops() -> None:
    assert model_tile_size("mtrefseg-r1") == 256
