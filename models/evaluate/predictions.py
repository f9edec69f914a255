"""Prediction folders: probability maps saved as PNG, read back and scored against a split."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from mtrs_geo.errors import InputError
from mtrs_geo.models.data.images import read_image, read_mask
from mtrs_geo.models.data.mtrefseg import MTRefSegDataset
from mtrs_geo.models.data.sample import Sample
from mtrs_geo.models.metrics import binarize, score_sample
from mtrs_geo.models.metrics import split_metrics as aggregate


def ground_truths(dataset: Dataset[Sample]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(sample_id, mask)`` without decoding images where the layout allows it."""
    if isinstance(dataset, MTRefSegDataset):
        for record in dataset.records:
            if record.mask is None:
                shape = read_image(record.image_a).shape[-2:]
                yield record.sample_id, np.zeros(shape, np.float32)
            else:
                yield record.sample_id, read_mask(record.mask)
        return
    for index in range(len(dataset)):  # type: ignore[arg-type]
        sample = dataset[index]
        yield sample["sample_id"], sample["mask"].numpy()


def read_prediction(folder: Path, sample_id: str, shape: tuple[int, int]) -> np.ndarray:
    """Read ``<folder>/<sample_id>.png`` as a probability map at ``shape``.

    0/1 masks are taken as they are; other 8-bit images are probabilities scaled by 255 (a 0/255
    mask included). A prediction at another size is resized (bilinear) to the ground truth's.
    """
    path = folder / f"{sample_id}.png"
    if not path.is_file():
        raise InputError(f"prediction missing: {path} (name: <json stem>_<expression index>.png)")
    with Image.open(path) as img:
        array = np.asarray(img.convert("L"), dtype=np.float32)
    probability = array if array.max() <= 1.0 else array / 255.0
    return resize_probability(probability, shape)


def resize_probability(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(H, W)`` probability map to ``shape``."""
    if probability.shape == tuple(shape):
        return probability
    tensor = torch.from_numpy(np.ascontiguousarray(probability, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def evaluate_predictions(folder: Path, dataset: Dataset[Sample]) -> dict[str, float | int]:
    """Score a folder of predicted masks (``<sample_id>.png``) against the split's ground truth."""
    if not Path(folder).is_dir():
        raise InputError(f"predictions folder not found: {folder}")
    scores = []
    for sample_id, mask in ground_truths(dataset):
        probability = read_prediction(Path(folder), sample_id, mask.shape)
        scores.append(score_sample(binarize(probability), mask > 0))
    return aggregate(scores)


def save_prediction(probability: np.ndarray, path: Path) -> None:
    """Write a probability map as an 8-bit PNG (``round(255 p)``: ``p >= 0.5`` <=> value >= 128)."""
    from mtrs_geo.write import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.clip(np.rint(np.asarray(probability) * 255.0), 0, 255).astype(np.uint8)
    with atomic_output(path) as partial:
        Image.fromarray(values).save(partial, format="PNG")
