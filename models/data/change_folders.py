"""Change-detection data without text, for stage 1 ("any change"): folders and torchgeo datasets.

- :class:`ChangeFolderDataset`: the common ``A/ B/ label/`` layout (LEVIR-CD, WHU-CD, DSIFN,
  SYSU-CD);
- :class:`OSCDCityDataset`: OSCD as distributed (one folder per city, one GeoTIFF per Sentinel-2
  band, ``cm/<city>-cm.tif`` with 1 = no change, 2 = change);
- :class:`TorchgeoChangeDataset`: torchgeo's change datasets (``LEVIRCD``, ``LEVIRCDPlus``,
  ``OSCD``) where their files are already on disk; nothing is ever downloaded.

Items have the same keys as :class:`mtrs_geo.models.data.mtrefseg.MTRefSegDataset`, with ``text``
the empty string (the stage-1 "any change" query).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mtrs_geo.errors import InputError
from mtrs_geo.layouts import (
    LABEL_DIRS,
    OSCD_DATES,
    OSCD_RGB,
    binarize_mask,
    find_label_dir,
    folder_pairs,
    oscd_cities,
    read_image,
    read_mask,
    read_oscd_bands,
    read_oscd_change,
)
from mtrs_geo.models.data.sample import Sample, Transform, make_sample

__all__ = [
    "LABEL_DIRS",
    "OSCD_RGB",
    "TORCHGEO_CHANGE_DATASETS",
    "ChangeFolderDataset",
    "OSCDCityDataset",
    "TorchgeoChangeDataset",
    "read_oscd_city",
    "torchgeo_to_sample",
]

TORCHGEO_CHANGE_DATASETS = ("LEVIRCD", "LEVIRCDPlus", "OSCD")


class ChangeFolderDataset(Dataset[Sample]):
    """An ``A/ B/ label/`` change-detection folder; pairs without a label file are skipped.

    Args:
        root: folder holding ``A/``, ``B/`` and a label folder (``label/``, ``mask/``, ...).
        names: file names to use (e.g. a list file's lines); default: every image in ``A/``.
        text: the query given with every item ("" = any change).
        transform: applied to each item dict.
        normalize: apply the engine's per-image percentile stretch.

    """

    def __init__(
        self,
        root: Path | str,
        names: list[str] | None = None,
        text: str = "",
        transform: Transform | None = None,
        normalize: bool = True,
    ) -> None:
        self.root = Path(root)
        self.pairs, self.skipped = folder_pairs(self.root, names)
        if not self.pairs:
            left_out = f": {', '.join(self.skipped[:3])} lack one" if self.skipped else ""
            raise InputError(
                f"{self.root}: no image pair with its after image and label (A/ B/ label/)"
                f"{left_out}"
            )
        self.label_dir = find_label_dir(self.root)
        self.names = [pair.name for pair in self.pairs]
        self.text = text
        self.transform = transform
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        pair = self.pairs[index]
        paths = {
            "image_a_path": str(pair.before),
            "image_b_path": str(pair.after),
            "mask_path": str(pair.label),
        }
        sample = make_sample(
            read_image(pair.before),
            read_image(pair.after),
            read_mask(pair.label),
            sample_id=f"{pair.stem}_0",
            text=self.text,
            normalize=self.normalize,
            **paths,
        )
        return self.transform(sample) if self.transform is not None else sample


def read_oscd_city(city: Path, bands: tuple[str, ...] = OSCD_RGB) -> tuple[np.ndarray, ...]:
    """Read an OSCD city folder as (before, after, mask): ``(C, H, W)`` float32 x2, ``(H, W)``."""
    before, after = (read_oscd_bands(city / date, bands)[0] for date in OSCD_DATES)
    return before, after, read_oscd_change(city).astype(np.float32)


class OSCDCityDataset(Dataset[Sample]):
    """OSCD city folders as distributed (``<city>/imgs_1``, ``imgs_2``, ``cm``), one per item."""

    def __init__(
        self,
        root: Path | str,
        cities: list[str] | None = None,
        transform: Transform | None = None,
        normalize: bool = True,
    ) -> None:
        self.root = Path(root)
        if cities is None:
            cities = [city.name for city in oscd_cities(self.root)]
        if not cities:
            raise InputError(f"{self.root}: no OSCD city folder (<city>/imgs_1, imgs_2, cm)")
        self.cities = cities
        self.transform = transform
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.cities)

    def __getitem__(self, index: int) -> Sample:
        city = self.root / self.cities[index]
        before, after, mask = read_oscd_city(city)
        sample = make_sample(
            before, after, mask, f"{city.name}_0", normalize=self.normalize, mask_path=str(city)
        )
        return self.transform(sample) if self.transform is not None else sample


class TorchgeoChangeDataset(Dataset[Sample]):
    """A torchgeo change dataset read from files already on disk (never downloaded).

    Args:
        name: the torchgeo class (``LEVIRCD``, ``LEVIRCDPlus``, ``OSCD``).
        root: where its files are.
        split: the torchgeo split (``train``, ``val``, ``test``).
        transform: applied to each converted item dict.
        normalize: apply the engine's per-image percentile stretch.

    """

    def __init__(
        self,
        name: str,
        root: Path | str,
        split: str = "train",
        transform: Transform | None = None,
        normalize: bool = True,
    ) -> None:
        if name not in TORCHGEO_CHANGE_DATASETS:
            raise InputError(
                f"unknown torchgeo change dataset {name!r}: use one of "
                + ", ".join(TORCHGEO_CHANGE_DATASETS)
            )
        module = importlib.import_module("torchgeo.datasets")
        cls = getattr(module, name)
        kwargs: dict[str, Any] = {"root": str(root), "split": split, "download": False}
        if name == "OSCD":
            kwargs["bands"] = OSCD_RGB
        try:
            self.inner = cls(**kwargs)
        except (AssertionError, module.DatasetNotFoundError) as exc:
            raise InputError(f"torchgeo {name} ({split}) not usable in {root}: {exc}") from exc
        self.name = name
        self.transform = transform
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Sample:
        item = self.inner[index]
        sample = torchgeo_to_sample(item, f"{self.name}_{index}", normalize=self.normalize)
        return self.transform(sample) if self.transform is not None else sample


def torchgeo_to_sample(item: dict[str, torch.Tensor], sample_id: str, normalize: bool) -> Sample:
    """Convert a torchgeo change item (``image`` ``(2, C, H, W)``, ``mask``) to our item dict."""
    image = item["image"].float().numpy()
    mask = item["mask"].float().numpy()
    if mask.ndim == 3:
        mask = mask[0]
    image_a, image_b = image[0][:3], image[1][:3]
    if image_a.shape[0] < 3:
        image_a = np.repeat(image_a[:1], 3, axis=0)
        image_b = np.repeat(image_b[:1], 3, axis=0)
    return make_sample(image_a, image_b, binarize_mask(mask), sample_id, normalize=normalize)
