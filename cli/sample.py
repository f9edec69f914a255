"""``mtrs sample``: copy the bundled sample pair into a folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("folder", type=click.Path(file_okay=False))
def sample(folder: str) -> None:
    """Copy the bundled sample pair (and its SOURCE.md) into FOLDER, created if needed."""
    from mtrs_geo.sample import copy_sample

    written = copy_sample(Path(folder))
    for path in written or []:
        click.echo(str(path))
