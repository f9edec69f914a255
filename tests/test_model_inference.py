"""MTRefSeg-R1 behind the engine interface: registry, checkpoints, prediction, end-to-end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from cli_run import run_mtrs
from scenes import ImageSpec, make_pair

from mtrs_geo import pipeline
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import ModelError
from mtrs_geo.model_api import ChangeModel, load_model, model_info
from mtrs_geo.models import inference
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-run"
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny")).save_pretrained(folder)
    (folder / inference.METADATA_FILE).write_text(json.dumps({"trained_on": "generated squares"}))
    return folder


@pytest.fixture(scope="module")
def wrapped(tiny_checkpoint: Path) -> ChangeModel:
    return inference.load_checkpoint(tiny_checkpoint)


def test_registry_describes_the_bundled_model_without_loading_it() -> None:
    info = model_info("mtrefseg-r1")
    assert info.name == "mtrefseg-r1" and info.query_aware and info.in_channels == 3
    assert info is inference.MODEL_INFO


def test_the_bundled_name_loads_the_bundled_checkpoint_or_says_none_is_bundled() -> None:
    if inference._is_checkpoint(inference.CHECKPOINT_DIR):
        model = load_model("mtrefseg-r1")
        assert isinstance(model, ChangeModel) and model.info.name == "mtrefseg-r1"
        assert "MB" in model.info.size
    else:
        with pytest.raises(
            ModelError, match="no MTRefSeg-R1 checkpoint is bundled yet.*--model PATH"
        ):
            load_model("mtrefseg-r1")


def test_a_folder_that_is_not_a_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not an MTRefSeg-R1 checkpoint"):
        inference.load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="not an MTRefSeg-R1 checkpoint"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        inference.load_checkpoint(tmp_path / "missing")


def test_a_broken_checkpoint_is_a_one_line_model_error(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelError) as error:
        inference.load_checkpoint(broken)
    assert "\n" not in str(error.value)


def test_checkpoint_info_shows_size_training_data_and_bands(wrapped: ChangeModel) -> None:
    info = wrapped.info
    assert info.name == "mtrefseg-r1@tiny-run"
    assert info.in_channels == 3
    assert info.trained_on == "generated squares"
    assert info.size.startswith("tiny, 0.2M params") and info.size.endswith("MB")


def test_trained_on_falls_back_to_the_model_card(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "# MTRefSeg-R1 base\n\n- **Trained on:** LEVIR-CD captions\n"
    )
    assert inference._trained_on(tmp_path) == "LEVIR-CD captions"
    # The trainer's run summary wins over the card.
    (tmp_path / "training.json").write_text(json.dumps({"trained_on": "SECOND + captions"}))
    assert inference._trained_on(tmp_path) == "SECOND + captions"


def test_predict_returns_gated_probabilities_matching_the_network(
    wrapped: ChangeModel, tiny_checkpoint: Path
) -> None:
    network = MTRefSegR1.from_pretrained(tiny_checkpoint, local_files_only=True).eval()
    gen = torch.Generator().manual_seed(0)
    before, after = torch.rand(3, 3, 64, 80, generator=gen), torch.rand(3, 3, 64, 80, generator=gen)
    wrapped.prepare("new buildings")
    array = wrapped.predict(before.numpy(), after.numpy())
    assert isinstance(array, np.ndarray) and array.shape == (3, 64, 80)
    assert array.dtype == np.float32 and array.min() >= 0 and array.max() <= 1
    probs = torch.from_numpy(array)
    with torch.no_grad():
        expected = network(before, after, texts=["new buildings"] * 3).probabilities()
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5)
    # Empty query and None both select the stage-1 "any change" mode.
    wrapped.prepare("")
    any_change = torch.from_numpy(wrapped.predict(before.numpy(), after.numpy()))
    wrapped.prepare(None)
    again = torch.from_numpy(wrapped.predict(before.numpy(), after.numpy()))
    torch.testing.assert_close(again, any_change, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            any_change, network(before, after).probabilities(), rtol=0, atol=1e-5
        )
    assert not torch.allclose(any_change, probs, atol=1e-4)


def test_small_tiles_and_band_mismatch(wrapped: ChangeModel) -> None:
    wrapped.prepare("new roads")
    rng = np.random.default_rng(0)
    tiles = rng.random((2, 2, 3, 20, 24), dtype=np.float32)
    small = wrapped.predict(tiles[0], tiles[1])
    assert small.shape == (2, 20, 24)
    four_bands = rng.random((1, 4, 64, 64), dtype=np.float32)
    with pytest.raises(ModelError, match="takes two"):
        wrapped.predict(four_bands, four_bands)


def test_the_device_is_resolved_by_name_and_reported(wrapped: ChangeModel) -> None:
    assert wrapped.to("cpu").device == "cpu"
    assert wrapped.to("auto").device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    wrapped.to("cpu")


def test_engine_runs_a_tiny_checkpoint_end_to_end(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "scene")
    output = tmp_path / "changes.geojson"
    mask = tmp_path / "probability.tif"
    config = DetectConfig(
        before=pair.before,
        after=pair.after,
        query="new buildings",
        output=output,
        mask_out=mask,
        model=str(tiny_checkpoint),
        tile_size=128,
        overlap=16,
        batch_size=4,
        device="cpu",
        threshold=1e-6,  # an untrained model: every valid pixel counts, so polygons are written
    )
    result = pipeline.detect(config)
    assert result.tiles_run > 0
    assert output.is_file() and mask.is_file()
    features = json.loads(output.read_text())["features"]
    assert features and features[0]["properties"]["model"].startswith("mtrefseg-r1")
    with rasterio.open(mask) as raster:
        values = raster.read(1)
    valid = values[values != raster.nodata]
    assert valid.size and valid.min() >= 0.0 and valid.max() <= 1.0


def test_cli_detect_with_a_checkpoint_folder_and_any_change(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    pair = make_pair(tmp_path / "scene")
    common = ["--model", tiny_checkpoint, "--tile-size", 128, "--overlap", 16, "--device", "cpu"]
    for extra in (["-q", "new buildings"], ["--any-change"]):
        output = tmp_path / f"changes{len(extra)}.gpkg"
        result = run_mtrs(
            "detect", pair.before, pair.after, *extra, "-o", output, "--threshold", 0.01,
            "--quiet", *common,
        )  # fmt: skip
        assert result.code == 0, result.err
        assert output.is_file()


def test_cli_rejects_a_band_count_the_checkpoint_was_not_trained_for(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    pair = make_pair(tmp_path / "scene4", before=ImageSpec(bands=4))
    output = tmp_path / "changes.geojson"
    result = run_mtrs(
        "detect", pair.before, pair.after, "-q", "new roads", "-o", output,
        "--model", tiny_checkpoint, "--device", "cpu",
    )  # fmt: skip
    assert result.code == 2
    assert "band" in result.err.lower()
    assert not output.exists()
