import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtrs_geo.baselines.cva import (
    MODEL_INFO,
    build_model,
    change_magnitude,
    magnitude_histogram,
    otsu_threshold,
)
from mtrs_geo.errors import InputError
from mtrs_geo.model_api import load_model, model_info


def test_otsu_splits_a_bimodal_sample_between_its_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(0.7, 0.05, 1000)])
    threshold = otsu_threshold(values)
    assert 0.25 < threshold < 0.55
    assert otsu_threshold(np.full(10, 0.3)) == 0.3
    with pytest.raises(ValueError):
        otsu_threshold(np.array([np.nan]))


def test_change_magnitude_is_the_change_vector_length_over_sqrt_bands() -> None:
    before = np.zeros((1, 4, 2, 2), dtype=np.float32)
    after = np.zeros((1, 4, 2, 2), dtype=np.float32)
    after[0, :, 0, 0] = 1.0
    after[0, 0, 1, 1] = 0.5
    magnitude = change_magnitude(before, after)
    assert magnitude.shape == (1, 2, 2) and magnitude.dtype == np.float32
    assert magnitude[0, 0, 0] == pytest.approx(1.0)
    assert magnitude[0, 1, 1] == pytest.approx(0.25)
    assert magnitude[0, 0, 1] == 0.0


def test_the_histogram_counts_each_valid_finite_magnitude_in_its_bin() -> None:
    rng = np.random.default_rng(3)
    before = rng.random((2, 3, 40, 50), dtype=np.float32)
    after = rng.random((2, 3, 40, 50), dtype=np.float32)
    after[0, 0, 0, :3] = (np.nan, np.inf, 9.0)  # non-finite, and a magnitude beyond 1
    after[1, :, 5, 5] = before[1, :, 5, 5]  # magnitude 0
    valid = rng.random((2, 40, 50)) > 0.2
    valid[0, 0, :3] = True
    magnitude = change_magnitude(before, after)[valid]
    magnitude = magnitude[np.isfinite(magnitude)]
    index = np.clip((magnitude * 4096).astype(np.int64), 0, 4095)
    expected = np.bincount(index, minlength=4096)
    counts = magnitude_histogram(before, after, valid)
    assert counts.dtype == np.int64 and counts.shape == (4096,)
    np.testing.assert_array_equal(counts, expected)
    finite = np.isfinite(change_magnitude(before, after))[valid]
    assert counts[4095] >= 1 and counts.sum() == finite.sum() == valid.sum() - 2


def test_the_histogram_of_tiles_valid_everywhere_counts_every_pixel() -> None:
    rng = np.random.default_rng(4)
    before = rng.random((2, 3, 40, 50), dtype=np.float32)
    after = rng.random((2, 3, 40, 50), dtype=np.float32)
    magnitude = change_magnitude(before, after)
    expected = np.bincount(
        np.minimum((magnitude * 4096).astype(np.int64), 4095).ravel(), minlength=4096
    )
    counts = magnitude_histogram(before, after, np.ones((2, 40, 50), dtype=bool))
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == 2 * 40 * 50


def planted_tiles(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    before = (0.4 + 0.05 * rng.random((2, 3, 64, 64))).astype(np.float32)
    after = (before + 0.02 * rng.standard_normal((2, 3, 64, 64))).astype(np.float32)
    truth = np.zeros((2, 64, 64), dtype=bool)
    truth[0, 10:30, 20:50] = True
    truth[1, 40:60, 5:25] = True
    red, blue = after[:, 0], after[:, 2]
    red[truth] += 0.5
    blue[truth] -= 0.3
    return before, after, truth


def test_calibrated_cva_finds_planted_changes() -> None:
    model = build_model()
    before, after, truth = planted_tiles(0)
    model.calibrate(before, after, np.ones_like(truth))
    prob = model.predict(before, after)
    assert prob.shape == (2, 64, 64) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    mask = prob >= 0.5
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95


def test_the_threshold_is_fixed_by_calibration_not_by_each_tile() -> None:
    model = build_model()
    before, after, truth = planted_tiles(1)
    model.calibrate(before, after, np.ones_like(truth))
    threshold = model.threshold  # type: ignore[attr-defined]
    # A tile without any change must stay unchanged (a per-tile Otsu would split its noise in two).
    quiet_b, quiet_a = before[:1, :, 32:, 32:], before[:1, :, 32:, 32:] + np.float32(0.01)
    assert float(model.predict(quiet_b, quiet_a).max()) < 0.5
    assert model.threshold == threshold  # type: ignore[attr-defined]
    # The probability's 0.5 level is the Otsu threshold.
    at = np.zeros((1, 3, 1, 1), dtype=np.float32)
    level = np.full((1, 3, 1, 1), threshold, dtype=np.float32)
    assert model.predict(at, level).item() == pytest.approx(0.5, abs=1e-4)


def test_invalid_pixels_do_not_take_part_in_calibration() -> None:
    model = build_model()
    before, after, truth = planted_tiles(2)
    valid = np.ones_like(truth)
    after_junk = after.copy()
    after_junk[:, :, :, 60:] = 50.0  # wild values in a nodata column
    valid[:, :, 60:] = False
    model.calibrate(before, after, valid)
    clean = model.threshold  # type: ignore[attr-defined]
    model.calibrate(before, after_junk, valid)
    assert model.threshold == pytest.approx(clean)  # type: ignore[attr-defined]


def test_cva_is_registered_and_says_it_ignores_the_query() -> None:
    assert model_info("cva") is MODEL_INFO
    assert MODEL_INFO.query_aware is False and MODEL_INFO.in_channels is None
    assert "query" in MODEL_INFO.description.lower()
    model = load_model("cva")
    model.prepare("new buildings")  # accepted and ignored
    assert model.info.name == "cva"


def test_cva_runs_on_the_cpu_and_refuses_an_accelerator() -> None:
    model = load_model("cva")
    assert model.to("auto").device == "cpu" and model.to("CPU").device == "cpu"
    for name in ("cuda", "cuda:0", "mps"):
        with pytest.raises(InputError, match="'cva' runs on the CPU only"):
            model.to(name)
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        model.to("gpu")


def test_a_cva_run_never_imports_torch(tmp_path: Path) -> None:
    """torch maps ~500 MiB on import: a numpy model's run must not pay for it."""
    script = (
        "import sys, numpy as np, rasterio\n"
        "from affine import Affine\n"
        "from mtrs_geo.cli.main import cli\n"
        "from mtrs_geo.config import DetectConfig\n"
        "from mtrs_geo.pipeline import detect\n"
        "profile = dict(driver='GTiff', width=96, height=96, count=3, dtype='uint8',\n"
        "               crs='EPSG:32633', transform=Affine(10, 0, 500000, 0, -10, 5000000))\n"
        "rng = np.random.default_rng(0)\n"
        "for name in ('b', 'a'):\n"
        "    with rasterio.open(f'{name}.tif', 'w', **profile) as dst:\n"
        "        dst.write(rng.integers(0, 255, (3, 96, 96), dtype=np.uint8))\n"
        "from pathlib import Path\n"
        "result = detect(DetectConfig(before=Path('b.tif'), after=Path('a.tif'),\n"
        "                             output=Path('c.gpkg'), tile_size=64, overlap=8))\n"
        "assert result.tiles_run > 0\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
