"""Dataset chips: a model run on each image pair of a split, scored at the mask's resolution.

Models run through the :class:`~mtrs_geo.model_api.ChangeModel` interface directly, one image
pair at a time with per-image statistics (dataset samples are not georeferenced).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch.utils.data import Dataset

from mtrs_geo.errors import InputError
from mtrs_geo.layouts import oscd_cities
from mtrs_geo.model_api import ChangeModel, load_model
from mtrs_geo.models.data.change_folders import ChangeFolderDataset, OSCDCityDataset
from mtrs_geo.models.data.mtrefseg import EXPRESSION_DIR, MTRefSegDataset
from mtrs_geo.models.data.sample import Sample
from mtrs_geo.models.evaluate.predictions import resize_probability, save_prediction
from mtrs_geo.models.metrics import SampleScore, binarize, score_sample
from mtrs_geo.models.metrics import split_metrics as aggregate
from mtrs_geo.padding import pad_tile

ANY_SUFFIX = "@any"  # model spec suffix: ignore the query (stage-1 any-change mode)
PAD_MULTIPLE = 32  # inputs at native size are mirror-padded to a multiple of this, pixels


def open_split(root: Path, split: str) -> Dataset[Sample]:
    """Open a split in whichever layout it has: MTRefSeg-21K, ``A/ B/ label/`` or OSCD cities."""
    folder = Path(root) / split
    if (folder / EXPRESSION_DIR).is_dir():
        return MTRefSegDataset(root, split)
    if (folder / "A").is_dir() and (folder / "B").is_dir():
        return ChangeFolderDataset(folder)
    if oscd_cities(folder):
        return OSCDCityDataset(folder)
    raise InputError(
        f"{folder}: not a dataset split "
        f"(need {EXPRESSION_DIR}/, A/ B/ label/, or OSCD city folders)"
    )


def parse_model_spec(spec: str) -> tuple[str, bool]:
    """Split a model spec into (model name or checkpoint folder, whether to ignore the query)."""
    ignore_query = spec.endswith(ANY_SUFFIX)
    return (spec[: -len(ANY_SUFFIX)] if ignore_query else spec), ignore_query


def load_model_spec(spec: str, device: str = "cpu") -> tuple[ChangeModel, bool]:
    """Load ``name``, ``checkpoint folder`` or either with ``@any`` (query ignored)."""
    name, ignore_query = parse_model_spec(spec)
    return load_model(name).to(device), ignore_query


def predict_sample(model: ChangeModel, sample: Sample, input_size: int | None = 512) -> np.ndarray:
    """Run ``model`` on one normalized pair; return the probability at the mask's resolution.

    ``input_size``: the pair is resized to this square side for the model (``None``: native size,
    mirror-padded to a multiple of 32 as the engine pads a tile, the padding invalid). The model
    must already be prepared with the query.
    """
    before = sample["image_a"][None].float()
    after = sample["image_b"][None].float()
    height, width = sample["mask"].shape[-2:]
    rows, cols = before.shape[-2:]
    if input_size is not None:
        size = (input_size, input_size)
        before = F.interpolate(before, size=size, mode="bilinear", align_corners=False)
        after = F.interpolate(after, size=size, mode="bilinear", align_corners=False)
        rows = cols = input_size
    else:
        padded = (rows + (-rows) % PAD_MULTIPLE, cols + (-cols) % PAD_MULTIPLE)
        before, after = pad_tile(before, *padded), pad_tile(after, *padded)
    before_np, after_np = before.numpy(), after.numpy()
    valid = np.zeros((1, *before_np.shape[-2:]), dtype=bool)
    valid[:, :rows, :cols] = True
    model.calibrate(before_np, after_np, valid)
    probability = model.predict(before_np, after_np)[0, :rows, :cols]
    return resize_probability(probability, (int(height), int(width)))


def evaluate_model(
    model: ChangeModel,
    dataset: Dataset[Sample],
    ignore_query: bool = False,
    input_size: int | None = 512,
    save_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, float | int]:
    """Score ``model`` on every sample of ``dataset``; optionally save its predictions as PNG."""
    from tqdm import tqdm

    scores: list[SampleScore] = []
    prepared: str | None = None
    first = True
    indexes = range(len(dataset))  # type: ignore[arg-type]
    for index in tqdm(indexes, desc="evaluate", disable=not progress, unit="sample"):
        sample = dataset[index]
        query = None if ignore_query else (sample["text"] or None)
        if first or query != prepared:
            model.prepare(query)
            prepared, first = query, False
        probability = predict_sample(model, sample, input_size)
        if save_dir is not None:
            save_prediction(probability, save_dir / f"{sample['sample_id']}.png")
        scores.append(score_sample(binarize(probability), sample["mask"].numpy() > 0))
    return aggregate(scores)
