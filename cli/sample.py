"""``mtrs sample``: copy the bundled sample pair (or write the time-series sample) into a folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "--series",
    is_flag=True,
    help="Write the three-date time-series sample instead: the real 2000 and 2003 scenes and a "
    "generated 2001 image between them (dated by their tags).",
)
def sample(folder: str, series: bool) -> None:
    """Copy the bundled sample pair (and its SOURCE.md) into FOLDER, created if needed."""
    if series:
        from mtrs_geo.timeseries import write_series_sample

        written: tuple[Path, ...] = write_series_sample(Path(folder))
    else:
        from mtrs_geo.sample import copy_sample

        written = copy_sample(Path(folder))
    for path in written:
        click.echo(str(path))
