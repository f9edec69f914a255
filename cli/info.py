"""``mtrs info``: the common grid of a pair, without running a model."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, is_dataclass
from typing import Any

import click

from mtrs_geo.cli.common import (
    OVERLAP_OPTION,
    TILE_SIZE_OPTION,
    AssetList,
    BandList,
    DateList,
    EngineCommand,
    check_crs,
    emit_json,
    image_paths,
)
from mtrs_geo.config import DEFAULT_OVERLAP, DetectConfig


def _plain(value: Any) -> Any:
    """Make a value JSON-friendly (dataclasses, paths, CRS objects, tuples)."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return {key: _plain(item) for key, item in asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def format_pair_info(description: Any) -> str:
    """Render ``describe_pair``'s JSON as aligned ``label  value`` lines for a terminal."""
    if not isinstance(description, dict):
        return str(description)
    info = dict(description)
    lines: list[tuple[str, str]] = []
    with contextlib.suppress(KeyError, TypeError, ValueError):
        xres, yres = info.pop("resolution")
        lines.append(("before", f"{info.pop('before')} (read: {info.pop('before_read')})"))
        lines.append(("after", f"{info.pop('after')} (read: {info.pop('after_read')})"))
        lines.append(("crs", str(info.pop("crs"))))
        width, height = info.pop("width"), info.pop("height")
        lines.append(("grid", f"{width} x {height} px, pixel {xres:g} x {yres:g} CRS units"))
        lines.append(("bounds", ", ".join(f"{v:.10g}" for v in info.pop("bounds"))))
        area = float(info.pop("area_m2"))
        if info.pop("pixel_grid", False):  # areas in square pixels, not metres
            lines.append(("overlap", f"{area:,.0f} px^2"))
        else:
            lines.append(("overlap", f"{area / 1e6:,.3f} km^2 ({area:,.0f} m^2)"))
        tiles, size, overlap = info.pop("tiles"), info.pop("tile_size"), info.pop("overlap")
        lines.append(("tiles", f"{tiles} of {size} px, overlap {overlap} px"))
        bands_b = ",".join(str(b) for b in info.pop("bands_before"))
        bands_a = ",".join(str(b) for b in info.pop("bands_after"))
        lines.append(("bands", f"before {bands_b}; after {bands_a}"))
        images, dates = info.pop("images", None) or [], info.pop("dates", None) or []
        if len(images) > 2:  # a time series: every image, in time order
            lines.append(("images", ", ".join(str(image) for image in images)))
        if dates:
            lines.append(("dates", ", ".join(date or "unknown" for date in dates)))
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, list | dict) else str(value)
        lines.append((key.replace("_", " "), shown))
    width = max(len(label) for label, _ in lines) if lines else 0
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)


@click.command(cls=EngineCommand)
@click.argument("images", nargs=-1, metavar="BEFORE AFTER [LATER]...")
@click.option("--sample", is_flag=True, help="Describe the bundled sample pair.")
@click.option(
    "--dates", type=DateList(), default=None, help="Acquisition dates of every image, in order."
)
@click.option("--bands", type=BandList(), default=None, help="1-based bands of the before image.")
@click.option(
    "--after-bands", type=BandList(), default=None, help="1-based bands of the after image."
)
@click.option("--assets", type=AssetList(), default=None, help="STAC assets stacked as bands.")
@click.option("--pixel-grid", is_flag=True, help="Pair images without georeferencing by pixel.")
@click.option("--crs", callback=check_crs, default=None, help="CRS of the common grid.")
@click.option(
    "--resolution", type=click.FloatRange(min=0, min_open=True), default=None, help="Pixel size."
)
@click.option(
    "--tile-size",
    type=TILE_SIZE_OPTION,
    default=None,
    help="Tile side [default: the default model's].",
)
@click.option(
    "--overlap", type=OVERLAP_OPTION, default=DEFAULT_OVERLAP, show_default=True, help="Overlap."
)
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON line.")
def info(
    images: tuple[str, ...],
    sample: bool,
    dates: tuple[str, ...] | None,
    bands: tuple[int, ...] | None,
    after_bands: tuple[int, ...] | None,
    assets: tuple[str, ...] | None,
    pixel_grid: bool,
    crs: str | None,
    resolution: float | None,
    tile_size: int | None,
    overlap: int,
    as_json: bool,
) -> None:
    """Show the common grid of BEFORE and AFTER (and LATER dates): CRS, size, area, tiles, dates."""
    from mtrs_geo.pipeline import describe_pair

    paths = image_paths(images, sample)
    config = DetectConfig(
        before=paths[0],
        after=paths[1],
        more_images=paths[2:],
        dates=dates or (),
        bands_before=bands,
        bands_after=after_bands,
        assets=assets,
        pixel_grid=pixel_grid,
        crs=crs,
        resolution=resolution,
        tile_size=tile_size or 0,
        overlap=overlap,
    )
    description = _plain(describe_pair(config))
    if as_json:
        emit_json(sys.stdout, description)
        return
    click.echo(format_pair_info(description))
