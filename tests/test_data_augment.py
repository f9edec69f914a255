import numpy as np
import torch

from mtrs_geo.models.augment import (
    AugmentConfig,
    AugmentedDataset,
    augment_sample,
    shift_image,
)
from mtrs_geo.models.direction_words import swap_direction_words


def _sample() -> dict:
    image = torch.arange(3 * 40 * 48, dtype=torch.float32).reshape(3, 40, 48) / (3 * 40 * 48)
    mask = torch.zeros(40, 48)
    mask[5:15, 20:30] = 1
    return {"image_a": image, "image_b": image.clone(), "mask": mask, "text": "new buildings"}


def test_geometry_is_shared_by_both_dates_and_the_mask() -> None:
    config = AugmentConfig(size=32, brightness=0.0, contrast=0.0)
    for seed in range(8):
        out = augment_sample(_sample(), config, np.random.default_rng(seed))
        assert out["image_a"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
        assert torch.equal(out["image_a"], out["image_b"])  # same crop/flip/rotation
        assert out["text"] == "new buildings"


def test_small_images_are_padded_and_resize_mode_scales() -> None:
    out = augment_sample(
        _sample(), AugmentConfig(size=64, hflip=0, vflip=0, rot90=False), np.random.default_rng(0)
    )
    assert out["image_a"].shape == (3, 64, 64) and float(out["mask"].sum()) == 100.0
    out = augment_sample(
        _sample(), AugmentConfig(size=20, mode="resize", rot90=False), np.random.default_rng(0)
    )
    assert out["mask"].shape == (20, 20)


def test_date_swap_swaps_the_direction_words() -> None:
    assert swap_direction_words("New buildings appeared") == "Removed buildings disappeared"
    assert swap_direction_words("demolished houses") == "built houses"
    config = AugmentConfig(
        size=None, hflip=0, vflip=0, rot90=False, brightness=0, contrast=0, swap_dates=1.0
    )
    sample = _sample()
    sample["image_b"] = sample["image_b"] * 0.5
    out = augment_sample(sample, config, np.random.default_rng(0))
    assert torch.equal(out["image_a"], sample["image_b"]) and out["text"] == "removed buildings"


def test_augmentations_depend_only_on_seed_epoch_and_index() -> None:
    data = [_sample() for _ in range(3)]
    first = AugmentedDataset(data, AugmentConfig(size=24), seed=4)  # type: ignore[arg-type]
    again = AugmentedDataset(data, AugmentConfig(size=24), seed=4)  # type: ignore[arg-type]
    assert torch.equal(first.item(2, 1)["image_a"], again.item(2, 1)["image_a"])
    assert not torch.equal(first.item(2, 1)["image_a"], first.item(3, 1)["image_a"])


def test_a_shift_moves_the_image_by_whole_and_half_pixels() -> None:
    image = torch.zeros(1, 8, 8)
    image[0, 3, 3] = 1.0
    assert shift_image(image, 1.0, 0.0)[0, 3, 4] == 1.0  # one pixel to the right
    assert shift_image(image, 0.0, -1.0)[0, 2, 3] == 1.0  # one pixel up
    half = shift_image(image, 0.5, 0.0)[0, 3]
    assert torch.allclose(half[3:5], torch.tensor([0.5, 0.5]))  # shared by two pixels
    assert float(half.sum()) == 1.0


def test_misregistration_moves_each_date_on_its_own_and_never_the_mask() -> None:
    config = AugmentConfig(
        size=None, hflip=0, vflip=0, rot90=False, brightness=0, contrast=0,
        misregister=1.0, misregister_px=1.5,
    )  # fmt: skip
    sample = _sample()
    out = augment_sample(sample, config, np.random.default_rng(0))
    assert torch.equal(out["mask"], sample["mask"])
    assert not torch.equal(out["image_a"], sample["image_a"])
    assert not torch.equal(out["image_a"], out["image_b"])  # two different offsets
    moved = (out["image_a"] - sample["image_a"]).abs().max()
    assert 0 < float(moved) < 0.05  # a sub-pixel-scale move of a smooth ramp, not a new image
    off = AugmentConfig(size=None, hflip=0, vflip=0, rot90=False, brightness=0, contrast=0)
    still = augment_sample(_sample(), off, np.random.default_rng(0))
    assert torch.equal(still["image_a"], sample["image_a"])  # off by default
