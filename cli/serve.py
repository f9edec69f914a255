"""``mtrs serve --stdio``: a warm engine for front ends (JSON lines; see :mod:`mtrs_geo.serve`)."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--stdio", is_flag=True, help="Read requests on stdin, answer on stdout.")
def serve(stdio: bool) -> None:
    """Answer detect requests as JSON lines, keeping models loaded between runs (for QGIS)."""
    if not stdio:
        raise click.UsageError("give --stdio: requests come on stdin, answers go to stdout")
    from mtrs_geo.serve import serve_stdio

    sys.exit(serve_stdio())
