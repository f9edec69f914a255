"""Joint augmentations of a before/after pair and its mask that keep the two dates aligned.

Geometric transforms (flips, rot90, crop or resize) are drawn once and applied to both dates and the
mask; photometric jitter is drawn per date. Misregistration (off by default) moves each date by its
own sub-pixel offset, resampled bilinearly, as when one date is warped onto the other's grid: real
pairs are never registered to the pixel, and the engine resamples the later images onto the first's
grid, so a model must not read the seams and blur this leaves as change. Swapping the dates is off
by default; when on, the direction words of the query are swapped with it ("new" <-> "removed",
...), so the text still describes the change.

Randomness comes from a generator seeded by (seed, epoch, index): the same sample gets the same
augmentation whatever the worker count, and a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mtrs_geo.models.data.sample import Sample
from mtrs_geo.models.direction_words import swap_direction_words


@dataclass(frozen=True)
class AugmentConfig:
    """Which joint augmentations run, with their probabilities and ranges.

    ``size``: output side in pixels (``None`` keeps the input size; batches then need equal sizes).
    ``mode``: ``"crop"`` takes a random ``size`` window (padding smaller images with zeros),
    ``"resize"`` scales the whole pair to ``size`` (as the paper's fixed input).
    """

    size: int | None = 256
    mode: str = "crop"
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    brightness: float = 0.1  # additive, per date
    contrast: float = 0.1  # multiplicative around the mean, per date
    swap_dates: float = 0.0
    misregister: float = 0.0  # probability that a date is shifted (each date drawn on its own)
    misregister_px: float = 1.0  # largest shift along each axis, in pixels


def _fit(sample: Sample, size: int, mode: str, rng: np.random.Generator) -> None:
    image_a, image_b, mask = sample["image_a"], sample["image_b"], sample["mask"]
    if mode == "resize":
        pair = torch.stack([image_a, image_b])
        pair = F.interpolate(pair, size=(size, size), mode="bilinear", align_corners=False)
        sample["image_a"], sample["image_b"] = pair[0], pair[1]
        sample["mask"] = F.interpolate(mask[None, None], size=(size, size), mode="nearest")[0, 0]
        return
    height, width = mask.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        image_a = F.pad(image_a, (0, pad_w, 0, pad_h))
        image_b = F.pad(image_b, (0, pad_w, 0, pad_h))
        mask = F.pad(mask, (0, pad_w, 0, pad_h))
        height, width = mask.shape
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    sample["image_a"] = image_a[:, window[0], window[1]]
    sample["image_b"] = image_b[:, window[0], window[1]]
    sample["mask"] = mask[window]


def _jitter(image: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    shift = float(rng.uniform(-config.brightness, config.brightness))
    scale = float(rng.uniform(1 - config.contrast, 1 + config.contrast))
    mean = image.mean(dim=(-2, -1), keepdim=True)
    return ((image - mean) * scale + mean + shift).clamp(0.0, 1.0)


def shift_image(image: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """Translate a ``(C, H, W)`` image by ``(dx, dy)`` pixels (bilinear, edges repeated)."""
    height, width = image.shape[-2:]
    theta = torch.tensor(
        [[1.0, 0.0, -2.0 * dx / width], [0.0, 1.0, -2.0 * dy / height]], dtype=image.dtype
    )
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    moved = F.grid_sample(
        image[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return moved[0]


def _misregister(
    image: torch.Tensor, config: AugmentConfig, rng: np.random.Generator
) -> torch.Tensor:
    if rng.random() >= config.misregister:
        return image
    dx, dy = (float(v) for v in rng.uniform(-config.misregister_px, config.misregister_px, 2))
    return shift_image(image, dx, dy)


def augment_sample(sample: Sample, config: AugmentConfig, rng: np.random.Generator) -> Sample:
    """Apply the joint augmentations to one item dict (returns a new dict)."""
    out = dict(sample)
    if config.size is not None:
        _fit(out, config.size, config.mode, rng)
    dims_flip: list[int] = []
    if rng.random() < config.hflip:
        dims_flip.append(-1)
    if rng.random() < config.vflip:
        dims_flip.append(-2)
    turns = int(rng.integers(0, 4)) if config.rot90 else 0
    for key in ("image_a", "image_b", "mask"):
        tensor = out[key]
        if dims_flip:
            tensor = torch.flip(tensor, dims_flip)
        if turns:
            tensor = torch.rot90(tensor, turns, dims=(-2, -1))
        out[key] = tensor.contiguous()
    if config.misregister:
        out["image_a"] = _misregister(out["image_a"], config, rng)
        out["image_b"] = _misregister(out["image_b"], config, rng)
    if config.brightness or config.contrast:
        out["image_a"] = _jitter(out["image_a"], config, rng)
        out["image_b"] = _jitter(out["image_b"], config, rng)
    if config.swap_dates and rng.random() < config.swap_dates:
        out["image_a"], out["image_b"] = out["image_b"], out["image_a"]
        out["text"] = swap_direction_words(str(out.get("text", "")))
    return out


class AugmentedDataset(Dataset[Sample]):
    """Wrap a dataset with reproducible joint augmentations (call :meth:`set_epoch` each epoch)."""

    def __init__(self, dataset: Dataset[Sample], config: AugmentConfig, seed: int = 0) -> None:
        self.dataset = dataset
        self.config = config
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (each epoch draws new ones)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def item(self, epoch: int, index: int) -> Sample:
        """Return item ``index`` as augmented in ``epoch``."""
        rng = np.random.default_rng((self.seed, epoch, index))
        return augment_sample(self.dataset[index], self.config, rng)

    def __getitem__(self, index: int) -> Sample:
        return self.item(self.epoch, index)


def collate_samples(samples: list[Sample]) -> dict[str, Any]:
    """Stack tensors of equal-size items; every other key becomes a list."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in ("image_a", "image_b", "mask"):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    batch["target_present"] = (batch["mask"].flatten(1).amax(dim=1) > 0).float()
    return batch
