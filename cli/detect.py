"""``mtrs detect``: a thin click shell over :func:`mtrs_geo.pipeline.detect`.

Options become a :class:`~mtrs_geo.config.DetectConfig` that the library checks; progress, run
messages and results are shown here. Errors a user can act on exit 2 with one line, a cancel
(SIGINT/SIGTERM, see :mod:`mtrs_geo.cli.signals`) exits 130 (:func:`mtrs_geo.cli.main.main`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mtrs_geo.cli.common import (
    DateList,
    EngineCommand,
    MessagePrinter,
    ProgressReporter,
    cancel_switch,
    check_scheduler,
    emit_json,
    engine_options,
    engine_settings,
    error_event,
    image_paths,
    progress_mode,
    summary_line,
)
from mtrs_geo.config import DEFAULT_PANEL_WIDTH, DetectConfig


@click.command(cls=EngineCommand)
@click.argument("images", nargs=-1, metavar="BEFORE AFTER [LATER]...")
@click.option(
    "-q",
    "--query",
    "queries",
    multiple=True,
    help="The change to find, in words (e.g. 'new buildings'; empty: any change); repeat it "
    "(or separate with ';') for several queries in one pass.",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Polygons: .geojson .gpkg .fgb .shp"
)
@click.option(
    "--mask-out", type=click.Path(dir_okay=False), help="Raster output: a Cloud-Optimized GeoTIFF."
)
@click.option("--sample", is_flag=True, help="Use the bundled sample pair as BEFORE and AFTER.")
@click.option(
    "--before-date", default=None, help="Acquisition date of BEFORE (default: from its tags)."
)
@click.option(
    "--after-date", default=None, help="Acquisition date of AFTER (default: from its tags)."
)
@click.option(
    "--dates",
    type=DateList(),
    default=None,
    help="Acquisition dates of every image, in order, comma-separated (default: their tags).",
)
@click.option(
    "--scheduler",
    default=None,
    callback=check_scheduler,
    help="Predict the scene's panels on a Dask cluster: a scheduler address (tcp://host:8786) "
    "or local:N workers; the images (and a --mask-out folder) on storage every worker shares.",
)
@click.option(
    "--panel-width",
    type=click.IntRange(min=1),
    default=DEFAULT_PANEL_WIDTH,
    show_default=True,
    help="Tile columns are run in panels about this wide (pixels); with --scheduler, one task "
    "each.",
)
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary.")
@click.option(
    "--progress-json", is_flag=True, help="Print progress as JSON lines (for front ends)."
)
def detect(
    images: tuple[str, ...],
    queries: tuple[str, ...],
    output: str | None,
    mask_out: str | None,
    sample: bool,
    before_date: str | None,
    after_date: str | None,
    dates: tuple[str, ...] | None,
    scheduler: str | None,
    panel_width: int,
    as_json: bool,
    progress_json: bool,
    **options: Any,
) -> None:
    """Find the changes described by text queries between BEFORE and AFTER (and LATER dates).

    Writes change polygons (-o) and/or a probability or mask COG (--mask-out). With several
    queries (-q A -q B) the polygons of every query share one output (a `query` attribute) and the
    mask has a band per query. With more than two images (in time order) each consecutive pair
    is compared and polygons carry `from_date` and `to_date`. Examples:

        mtrs detect before.tif after.tif -q "new buildings" -o changes.geojson

        mtrs detect 2019.tif 2021.tif 2023.tif -q "new buildings" -q "new roads" -o changes.gpkg

    With --scheduler the scene's panels are predicted on a Dask cluster (the same outputs):

        mtrs detect before.tif after.tif -o changes.gpkg --scheduler tcp://10.0.0.5:8786
    """
    from mtrs_geo.multiquery import query_settings

    try:
        paths = image_paths(images, sample)
        config = DetectConfig(
            before=paths[0],
            after=paths[1],
            more_images=paths[2:],
            dates=dates or (),
            **query_settings(queries),
            output=Path(output) if output else None,
            mask_out=Path(mask_out) if mask_out else None,
            before_date=before_date,
            after_date=after_date,
            panel_width=panel_width,
            **engine_settings(options),
        )
        config.check()  # before the engine (and its libraries) are imported
        mode = progress_mode(options["quiet"], as_json, progress_json)
        from mtrs_geo.pipeline import detect as run

        reporter = ProgressReporter(mode)
        try:
            messages = MessagePrinter(mode, options["quiet"])
            result = run(config, reporter, cancel_switch(), messages, scheduler=scheduler)
        finally:
            reporter.close()
    except (KeyboardInterrupt, Exception) as exc:
        if progress_json:
            emit_json(sys.stdout, error_event(exc))
        raise
    # The outputs are in place: the run is finished, whatever signal comes now.
    summary = result.to_json()
    if progress_json:
        emit_json(sys.stdout, {"event": "done", **summary})
    elif as_json:
        emit_json(sys.stdout, summary)
    elif not options["quiet"]:
        click.echo(summary_line(result))
