"""Run configuration: small frozen dataclasses passed from the front ends into the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MaskType = Literal["probability", "binary"]


@dataclass(frozen=True)
class DetectConfig:
    """Everything one ``mtrs detect`` run needs.

    Distances are in metres, areas in square metres, sizes in pixels of the common grid.
    """

    before: Path
    after: Path
    query: str = ""
    output: Path | None = None  # vector output (.geojson, .gpkg, .fgb, .shp); None: no vectors
    mask_out: Path | None = None  # raster output (Cloud-Optimized GeoTIFF)
    mask_type: MaskType = "probability"
    model: str = "cva"
    bands_before: tuple[int, ...] | None = None  # 1-based band indexes; None: all bands
    bands_after: tuple[int, ...] | None = None  # None: same as bands_before
    crs: str | None = None  # common grid CRS; None: the before image's CRS
    resolution: float | None = None  # common grid pixel size in CRS units; None: before's
    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 4
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threshold: float = 0.5
    min_area: float = 0.0  # m^2
    simplify: float = 0.0  # m
    any_change: bool = False  # ignore the query: stage-1 "any change" mode
    prefetch: int = 4  # tiles read ahead of the model
    # Tile columns are processed in panels about this wide (pixels), one after the other: memory
    # follows the panel's width, not the scene's.
    panel_width: int = 4096
    extra_attributes: dict[str, str] = field(default_factory=dict)
