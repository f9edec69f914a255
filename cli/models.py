"""``mtrs models``: the registered models and what each needs."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import click

from mtrs_geo.cli.common import emit_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON lines.")
def models(as_json: bool) -> None:
    """List the registered models: what each needs, query-aware or not, size, training data."""
    from mtrs_geo.config import DEFAULT_MODEL
    from mtrs_geo.model_api import model_info, registered_names

    for name in registered_names():
        record: dict[str, Any]
        try:
            described = model_info(name)
            record = {"available": True, **asdict(described)}
        except Exception as exc:  # noqa: BLE001 - a model that cannot load is listed, not fatal
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            record = {"name": name, "available": False, "reason": reason}
        record["default"] = name == DEFAULT_MODEL
        if as_json:
            emit_json(sys.stdout, record)
            continue
        if not record["available"]:
            click.echo(f"{name}\n  not available here: {record['reason']}\n")
            continue
        bands = record["in_channels"] if record["in_channels"] is not None else "any (same in both)"
        label = f"{name} (the default)" if record["default"] else name
        click.echo(
            f"{label}: {record['description']}\n"
            f"  query-aware: {'yes' if record['query_aware'] else 'no (the query is ignored)'}\n"
            f"  bands:       {bands}\n"
            f"  needs:       {record['needs']}\n"
            f"  size:        {record['size']}\n"
            f"  trained on:  {record['trained_on']}\n"
            + (f"  understands: {record['understands']}\n" if record["understands"] != "-" else "")
        )
