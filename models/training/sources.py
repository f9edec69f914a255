"""Turn the ``data`` sources of a run configuration into datasets of item dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from mtrs_geo.errors import InputError
from mtrs_geo.models.data.change_folders import (
    ChangeFolderDataset,
    OSCDCityDataset,
    TorchgeoChangeDataset,
)
from mtrs_geo.models.data.geo_scenes import GeoScenePairDataset
from mtrs_geo.models.data.mtrefseg import MTRefSegDataset
from mtrs_geo.models.data.sample import Sample


class GeoChipDataset(Dataset[Sample]):
    """A fixed list of chips of a georeferenced scene, drawn once with a torchgeo geo sampler."""

    def __init__(self, scene: GeoScenePairDataset, chips: list[Any]) -> None:
        self.scene = scene
        self.chips = chips

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> Sample:
        return self.scene[self.chips[index]]


def geo_scene_chips(source: dict[str, Any], seed: int, training: bool) -> GeoChipDataset:
    """Chips of a ``geo_scene`` source: random chips to train on, a grid of chips to evaluate."""
    from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

    scene = GeoScenePairDataset(
        Path(source["before"]),
        Path(source["after"]),
        Path(source["labels"]),
        text_field=source.get("text_field", "query"),
        query=source.get("query"),
        bands=tuple(source.get("bands", (1, 2, 3))),
    )
    size = int(source.get("chip_size", 256))
    sampler: GridGeoSampler | RandomGeoSampler
    if training:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomGeoSampler(
            scene, size=size, length=int(source.get("chips", 64)), generator=generator
        )
    else:
        sampler = GridGeoSampler(scene, size=size, stride=int(source.get("stride", size)))
    return GeoChipDataset(scene, list(sampler))


def craft_stream(source: dict[str, Any], seed: int) -> Dataset[Sample]:
    """Triplets crafted on the fly from the donor folders under ``root`` (synthetic + real)."""
    from mtrs_geo.models.data.craft_stream import CraftStreamDataset, StreamOptions

    defaults = StreamOptions()
    options = StreamOptions(
        size=int(source.get("size", defaults.size)),
        synthetic_share=float(source.get("synthetic_share", defaults.synthetic_share)),
        swap_dates=float(source.get("swap_dates", defaults.swap_dates)),
        length=int(source.get("length", defaults.length)),
        real_weights={str(k): float(v) for k, v in dict(source.get("real_weights", {})).items()},
        appearance_share=float(source.get("appearance_share", defaults.appearance_share)),
    )
    split = str(source.get("split", "train"))
    return CraftStreamDataset.from_root(Path(source["root"]), split, options, seed)


def build_source(source: dict[str, Any], seed: int = 0, training: bool = True) -> Dataset[Sample]:
    """Open one data source (see :data:`mtrs_geo.models.training.config.SOURCE_TYPES`)."""
    kind = source["type"]
    try:
        if kind == "mtrefseg":
            return MTRefSegDataset(source["root"], str(source.get("split", "train")))
        if kind == "change_folder":
            names = source.get("names")
            if "list_file" in source:
                lines = Path(source["list_file"]).read_text(encoding="utf-8").split()
                names = [line.strip() for line in lines if line.strip()]
            return ChangeFolderDataset(source["root"], names=names, text=source.get("text", ""))
        if kind == "oscd":
            return OSCDCityDataset(source["root"], cities=source.get("cities"))
        if kind == "torchgeo":
            return TorchgeoChangeDataset(
                source["name"], source["root"], str(source.get("split", "train"))
            )
        if kind == "geo_scene":
            return geo_scene_chips(source, seed, training)
        if kind == "craft_stream":
            return craft_stream(source, seed)
    except KeyError as exc:
        raise InputError(f"data source of type {kind!r} needs the key {exc.args[0]!r}") from exc
    raise InputError(f"unknown data source type {kind!r}")


def build_sources(
    sources: tuple[dict[str, Any], ...], seed: int = 0, training: bool = True
) -> Dataset[Sample]:
    """Concatenate the sources, each repeated ``repeat`` times (default 1)."""
    if not sources:
        raise InputError("no data source given")
    parts: list[Dataset[Sample]] = []
    for number, source in enumerate(sources):
        dataset = build_source(source, seed + number, training)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise InputError(f"data source {number + 1} ({source['type']}) holds no sample")
        parts.extend([dataset] * int(source.get("repeat", 1)))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)
