import numpy as np
import pytest
import torch

from mtrs_geo.baselines.cva import MODEL_INFO, build_model, change_magnitude, otsu_threshold
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
    before = torch.zeros(1, 4, 2, 2)
    after = torch.zeros(1, 4, 2, 2)
    after[0, :, 0, 0] = 1.0
    after[0, 0, 1, 1] = 0.5
    magnitude = change_magnitude(before, after)
    assert magnitude.shape == (1, 2, 2)
    assert magnitude[0, 0, 0].item() == pytest.approx(1.0)
    assert magnitude[0, 1, 1].item() == pytest.approx(0.25)
    assert magnitude[0, 0, 1].item() == 0.0


def planted_tiles(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    before = 0.4 + 0.05 * torch.rand(2, 3, 64, 64, generator=gen)
    after = before + 0.02 * torch.randn(2, 3, 64, 64, generator=gen)
    truth = torch.zeros(2, 64, 64, dtype=torch.bool)
    truth[0, 10:30, 20:50] = True
    truth[1, 40:60, 5:25] = True
    after[:, 0][truth] += 0.5
    after[:, 2][truth] -= 0.3
    return before, after, truth


def test_calibrated_cva_finds_planted_changes() -> None:
    model = build_model()
    before, after, truth = planted_tiles(0)
    model.calibrate(before, after, torch.ones_like(truth))
    prob = model.predict(before, after)
    assert prob.shape == (2, 64, 64) and 0.0 <= float(prob.min()) and float(prob.max()) <= 1.0
    mask = prob >= 0.5
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95


def test_the_threshold_is_fixed_by_calibration_not_by_each_tile() -> None:
    model = build_model()
    before, after, truth = planted_tiles(1)
    model.calibrate(before, after, torch.ones_like(truth))
    threshold = model.threshold  # type: ignore[attr-defined]
    # A tile without any change must stay unchanged (a per-tile Otsu would split its noise in two).
    quiet_b, quiet_a = before[:1, :, 32:, 32:], before[:1, :, 32:, 32:] + 0.01
    assert float(model.predict(quiet_b, quiet_a).max()) < 0.5
    assert model.threshold == threshold  # type: ignore[attr-defined]
    # The probability's 0.5 level is the Otsu threshold.
    at = torch.zeros(1, 3, 1, 1)
    level = torch.full((1, 3, 1, 1), float(threshold))
    assert model.predict(at, level).item() == pytest.approx(0.5, abs=1e-4)


def test_invalid_pixels_do_not_take_part_in_calibration() -> None:
    model = build_model()
    before, after, truth = planted_tiles(2)
    valid = torch.ones_like(truth)
    after_junk = after.clone()
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
