"""``mtrs batch``: :func:`mtrs_geo.batch.run_batch` over the rows of a CSV, one line per row."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mtrs_geo.cli.common import (
    EngineCommand,
    MessagePrinter,
    ProgressReporter,
    cancel_switch,
    check_scheduler,
    emit_json,
    engine_options,
    engine_settings,
    progress_mode,
    summary_line,
)
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import Cancelled


@click.command(cls=EngineCommand)
@click.argument("pairs_csv", metavar="PAIRS.csv", type=click.Path(dir_okay=False))
@click.option(
    "--mask-out-dir",
    "mask_out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write each row's mask COG here, named after its output.",
)
@click.option(
    "--scheduler",
    default=None,
    callback=check_scheduler,
    help="Run rows as Dask tasks: a scheduler address (tcp://host:8786) or local:N workers.",
)
@engine_options
@click.option("--json", "as_json", is_flag=True, help="One JSON line per row, then a summary line.")
def batch(
    pairs_csv: str, mask_out_dir: str | None, scheduler: str | None, as_json: bool, **options: Any
) -> None:
    """Run detect for every row of PAIRS.csv (columns before, after, query, output).

    Relative paths are resolved against the CSV's folder; an optional mask_out column names a mask
    COG per row. Rows that would write one file, or over an input of any row (an image, the
    area of interest), are refused before any work (exit 2). A failing row is reported and the
    batch goes on; exit code 1 if any row failed. A cancel (Ctrl+C) keeps the outputs of the rows
    that finished and exits 130. With --scheduler the rows run on a Dask cluster (each worker
    reads its row's images from the shared path or URL) and are reported as they finish.
    """
    from mtrs_geo.batch import BatchCancelled, batch_configs, read_pairs_csv, run_batch

    quiet = options["quiet"]
    # The pair and outputs are the rows'; this template holds the shared options.
    template = DetectConfig(before=Path(), after=Path(), **engine_settings(options))
    rows = batch_configs(
        read_pairs_csv(Path(pairs_csv)), template, Path(mask_out_dir) if mask_out_dir else None
    )
    mode = progress_mode(quiet, as_json, False)
    reporters: dict[int, ProgressReporter] = {}
    finished: list[Any] = []  # the outcomes reported so far

    def progress_for(number: int) -> ProgressReporter:
        reporters[number] = ProgressReporter(mode, label=f"row {number}")
        return reporters[number]

    def on_row(outcome: Any) -> None:
        finished.append(outcome)
        if outcome.number in reporters:
            reporters.pop(outcome.number).close()
        if as_json:
            emit_json(sys.stdout, outcome.to_json())
        elif outcome.ok and not quiet:
            click.echo(f"row {outcome.number}: ok, {summary_line(outcome.result)}")
        elif not outcome.ok:
            click.echo(f"row {outcome.number}: FAILED: {outcome.message}", err=True)

    try:
        if scheduler is not None:
            from mtrs_geo.distributed import run_batch_on_cluster

            outcomes = run_batch_on_cluster(rows, scheduler, on_row=on_row, cancel=cancel_switch())
        else:
            outcomes = run_batch(
                rows,
                on_row=on_row,
                progress_for=progress_for,
                cancel=cancel_switch(),
                messages=MessagePrinter(mode, quiet),
            )
    except Cancelled as exc:
        # A plain Cancelled (not a batch's account of its rows): the rows not reported did not
        # finish.
        if not isinstance(exc, BatchCancelled):
            exc = BatchCancelled.unreported(rows, finished)
        if as_json:
            emit_json(sys.stdout, exc.summary())
        raise exc from None
    finally:
        for reporter in reporters.values():
            reporter.close()
    failures = sum(not outcome.ok for outcome in outcomes)
    total = len(outcomes)
    if as_json:
        emit_json(sys.stdout, {"rows": total, "ok": total - failures, "failed": failures})
    elif not quiet:
        click.echo(f"{total - failures} of {total} rows done, {failures} failed")
    if failures:
        sys.exit(1)
