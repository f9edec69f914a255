"""MTRefSeg-21K's own folder layout: one sample per (image pair, referring expression).

A split is a folder::

    <split>/A/<name>.<ext>                    before image
    <split>/B/<name>.<ext>                    after image
    <split>/masks/<name>.<ext>                change mask of the referred change (may be all zero)
    <split>/referring_expression/<stem>.json  {"img_A": ..., "img_B": ...,
                                               "referring_expressions": ["...", ...],
                                               "mask": [{"path": ...}, ...]}

Images and masks are PNG, JPEG, BMP or WebP pictures, or GDAL rasters (``.tif``, ``.tiff``,
``.img``, ``.vrt``), read by :mod:`mtrs_geo.layouts`; masks may be 0/1 or 0/255. The JSON files are
read in file-name order, one sample per expression. ``referring_expressions`` is a list or a
single string. ``mask`` holds one entry per expression (same order) or a single entry shared by
all of them; an entry is ``{"path": ...}`` or a bare path, and an empty or null path, like a
missing ``mask``, is an empty mask. Paths in the JSON may be absolute, relative to the split
folder, or names found in ``A/``, ``B/`` and ``masks/``. Splits are named by their path under the
dataset root (``train``, ``val``, ``RS/val``, ...; ``.`` for the root itself);
:func:`list_splits` finds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mtrs_geo.errors import InputError
from mtrs_geo.models.data.images import read_image, read_mask
from mtrs_geo.models.data.sample import Sample, Transform, make_sample

EXPRESSION_DIR = "referring_expression"


@dataclass(frozen=True)
class TripletRecord:
    """One (pair, expression) sample of a split, with its resolved file paths."""

    sample_id: str  # "<json stem>_<expression index>", also the prediction file stem
    json_path: Path
    expression_index: int
    text: str
    image_a: Path
    image_b: Path
    mask: Path | None  # None: empty mask


def list_splits(root: Path) -> list[str]:
    """Names (relative paths, '/'-separated) of every split folder under ``root``, sorted.

    ``root`` itself counts as the split ``"."`` when it holds ``referring_expression/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    found = sorted(
        "." if d.parent == root else d.parent.relative_to(root).as_posix()
        for d in root.rglob(EXPRESSION_DIR)
        if d.is_dir()
    )
    return found


def split_dir(root: Path, split: str) -> Path:
    """Return the folder of ``split`` under ``root``, checked to hold ``referring_expression/``."""
    folder = Path(root) / split
    if not (folder / EXPRESSION_DIR).is_dir():
        available = ", ".join(list_splits(root)) or "none"
        raise InputError(
            f"split {split!r} not found in {root} (no {EXPRESSION_DIR}/ folder); "
            f"splits found: {available}"
        )
    return folder


def _resolve(folder: Path, value: str, subdir: str, what: str, json_path: Path) -> Path:
    """Find a file named in a JSON: as given, relative to the split, or by name in ``subdir``."""
    given = Path(value)
    candidates = [given] if given.is_absolute() else [folder / given, folder / subdir / given.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(f"{json_path.name}: {what} {value!r} not found under {folder}")


def _mask_entries(entry: Any, count: int, json_path: Path) -> list[str | None]:
    """Normalize the JSON's ``mask`` field to one path (or None) per expression."""
    if entry is None:
        items: list[Any] = []
    elif isinstance(entry, list):
        items = entry
    else:
        items = [entry]
    paths: list[str | None] = []
    for item in items:
        value = item.get("path") if isinstance(item, dict) else item
        paths.append(str(value) if value else None)
    if not paths:
        return [None] * count
    if len(paths) == 1:
        return paths * count
    if len(paths) != count:
        raise InputError(
            f"{json_path.name}: {len(paths)} masks for {count} referring expressions "
            "(need one per expression or one shared)"
        )
    return paths


def read_split(root: Path, split: str) -> list[TripletRecord]:
    """Parse every JSON of a split into sample records (one per expression), in file-name order."""
    folder = split_dir(root, split)
    records: list[TripletRecord] = []
    for json_path in sorted((folder / EXPRESSION_DIR).glob("*.json")):
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {json_path}: {exc}") from exc
        if not isinstance(meta, dict):
            raise InputError(f"{json_path}: expected a JSON object")
        for key in ("img_A", "img_B", "referring_expressions"):
            if key not in meta:
                raise InputError(f"{json_path.name}: missing key {key!r}")
        expressions = meta["referring_expressions"]
        if isinstance(expressions, str):
            expressions = [expressions]
        image_a = _resolve(folder, str(meta["img_A"]), "A", "img_A", json_path)
        image_b = _resolve(folder, str(meta["img_B"]), "B", "img_B", json_path)
        masks = _mask_entries(meta.get("mask"), len(expressions), json_path)
        for index, (text, mask) in enumerate(zip(expressions, masks, strict=True)):
            records.append(
                TripletRecord(
                    sample_id=f"{json_path.stem}_{index}",
                    json_path=json_path,
                    expression_index=index,
                    text=str(text).strip(),
                    image_a=image_a,
                    image_b=image_b,
                    mask=None
                    if mask is None
                    else _resolve(folder, mask, "masks", "mask", json_path),
                )
            )
    return records


def load_triplet(record: TripletRecord, normalize: bool = True) -> Sample:
    """Read one record into a sample dict (see :class:`MTRefSegDataset`)."""
    image_a = read_image(record.image_a)
    if record.mask is None:
        mask = np.zeros(image_a.shape[-2:], dtype=np.float32)
    else:
        mask = read_mask(record.mask)
    sample = make_sample(
        image_a,
        read_image(record.image_b),
        mask,
        sample_id=record.sample_id,
        text=record.text,
        normalize=normalize,
        json_path=str(record.json_path),
        image_a_path=str(record.image_a),
        image_b_path=str(record.image_b),
        mask_path="" if record.mask is None else str(record.mask),
    )
    sample["expression_index"] = record.expression_index
    return sample


class MTRefSegDataset(Dataset[Sample]):
    """A split of a dataset in MTRefSeg-21K's layout, one item per (pair, expression).

    Items are dicts: ``image_a``, ``image_b`` ``(3, H, W)`` float32 (percentile-stretched to [0, 1]
    per image unless ``normalize=False``), ``mask`` ``(H, W)`` float32 in {0, 1} at the image's
    resolution, ``text`` (str), ``sample_id`` (``<json stem>_<expression index>``),
    ``expression_index``, and the source paths ``json_path``, ``image_a_path``, ``image_b_path``,
    ``mask_path`` ("" for an empty mask without a file).

    Args:
        root: the dataset folder.
        split: the split's path under ``root`` (``"train"``, ``"RS/val"``; ``"."`` for ``root``).
        transform: applied to each item dict (training wraps the dataset in
            :class:`mtrs_geo.models.augment.AugmentedDataset` instead).
        normalize: apply the engine's per-image percentile stretch.

    """

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transform: Transform | None = None,
        normalize: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.normalize = normalize
        self.records = read_split(self.root, split)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        sample = load_triplet(self.records[index], normalize=self.normalize)
        return self.transform(sample) if self.transform is not None else sample
