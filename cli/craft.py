"""``mtrs craft``: build referring benchmarks from change data, audit, export accepted ones.

Thin front end over :mod:`mtrs_geo.craft`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import threading
import webbrowser
from collections.abc import Iterator
from pathlib import Path

import click

from mtrs_geo.cancel import CancelSwitch
from mtrs_geo.errors import InputError

DEFAULT_SUBJECT = {"levir-cd": "building", "oscd": "urban area"}


def _splits(value: str) -> tuple[tuple[str, float], ...]:
    """Parse ``train=0.8,val=0.1,test=0.1``."""
    parts: list[tuple[str, float]] = []
    for chunk in value.split(","):
        name, sep, share = chunk.partition("=")
        if not sep or not name.strip():
            raise InputError(f"bad --splits entry {chunk!r}; use NAME=SHARE,NAME=SHARE")
        try:
            parts.append((name.strip(), float(share)))
        except ValueError as exc:
            raise InputError(f"bad share in --splits entry {chunk!r}") from exc
    return tuple(parts)


def _bands(value: str) -> tuple[int, int, int]:
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError as exc:
        raise InputError(f"bad --bands {value!r}; use three 1-based indexes like 3,2,1") from exc
    if len(bands) != 3 or min(bands) < 1:
        raise InputError(f"bad --bands {value!r}; use three 1-based indexes like 3,2,1")
    return bands[0], bands[1], bands[2]


def _default_auditor() -> str:
    try:
        return os.environ.get("MTRS_AUDITOR") or getpass.getuser()
    except (KeyError, OSError):
        return "auditor"


@contextlib.contextmanager
def _cancel_on_signals() -> Iterator[CancelSwitch]:
    """SIGINT and SIGTERM cancel the run as they do ``mtrs detect`` (:mod:`mtrs_geo.cli.signals`).

    The run stops at its next check, removes its staging folder and exits 130; a second signal
    interrupts at once. The previous handlers come back when the block ends.
    """
    from mtrs_geo.cli.signals import install

    switch = CancelSwitch()
    restore = install(switch)
    try:
        yield switch
    finally:
        restore()


@click.group("craft")
def craft() -> None:
    """Build and audit MTRS benchmarks from change data (CRAFT)."""


@craft.command("build")
@click.argument("input_dir", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option(
    "--layout",
    type=click.Choice(["levir-cd", "semantic", "oscd", "scenes", "synthetic"]),
    required=True,
    help="Input layout: A/B/label PNGs, SECOND-style class maps, OSCD cities, georeferenced "
    "scenes with change polygons, or synthetic changes over a folder of donor data sets.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="synthetic: number of generated pairs.",
)
@click.option(
    "--donors",
    type=click.Choice(["train", "held_out", "all"]),
    default="all",
    show_default=True,
    help="synthetic: which side of the donors' scene hold-out split to draw from.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same dataset.")
@click.option(
    "--gsd",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    help="Metres per pixel of inputs that are not georeferenced.",
)
@click.option(
    "--chip-size",
    type=click.IntRange(min=0),
    default=512,
    show_default=True,
    help="Cut larger images into chips of at most this many pixels a side (0: never).",
)
@click.option(
    "--subject",
    default=None,
    help="Noun of a binary change map [default: building for levir-cd, urban area for oscd].",
)
@click.option(
    "--direction",
    type=click.Choice(["appeared", "disappeared", "mixed"]),
    default="mixed",
    show_default=True,
    help="What a binary change map holds: only appearances, only disappearances, or both.",
)
@click.option("--from-field", default="from_class", show_default=True, help="Polygon attribute.")
@click.option("--to-field", default="to_class", show_default=True, help="Polygon attribute.")
@click.option(
    "--bands", default="1,2,3", show_default=True, help="Red,green,blue of scene rasters."
)
@click.option("--nir-band", type=click.IntRange(min=1), default=None, help="NIR band of scenes.")
@click.option("--min-instance-pixels", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--min-mask-pixels", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-expressions", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--splits", default="train=0.8,val=0.1,test=0.1", show_default=True)
@click.option(
    "--captions",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Real change captions (JSON lines with 'sentences') to report vocabulary coverage.",
)
@click.option(
    "--paraphrase-model",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Local transformers seq2seq model folder that rewords the grammar's expressions.",
)
@click.option("--paraphrase-prefix", default="paraphrase: ", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def build_command(
    input_dir: Path,
    output: Path,
    layout: str,
    count: int,
    donors: str,
    seed: int,
    gsd: float,
    chip_size: int,
    subject: str | None,
    direction: str,
    from_field: str,
    to_field: str,
    bands: str,
    nir_band: int | None,
    min_instance_pixels: int,
    min_mask_pixels: int,
    max_expressions: int,
    splits: str,
    captions: Path | None,
    paraphrase_model: Path | None,
    paraphrase_prefix: str,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Build a referring dataset (MTRefSeg-21K layout) from change data in INPUT_DIR."""
    from mtrs_geo.craft.builder import BuildOptions, build, build_reads
    from mtrs_geo.craft.outputs import check_output
    from mtrs_geo.craft.paraphrase import TransformersParaphraser
    from mtrs_geo.craft.sources import SourceOptions

    source = SourceOptions(
        layout=layout,
        gsd=gsd,
        chip_size=chip_size,
        subject=subject or DEFAULT_SUBJECT.get(layout, "change"),
        direction=None if direction == "mixed" else direction,
        from_field=from_field,
        to_field=to_field,
        bands=_bands(bands),
        nir_band=nir_band,
        count=count,
        seed=seed,
        donors=donors,
    )
    options = BuildOptions(
        source=source,
        seed=seed,
        min_instance_pixels=min_instance_pixels,
        min_mask_pixels=min_mask_pixels,
        max_expressions=max_expressions,
        splits=_splits(splits),
        captions=captions,
    )
    # Before the (slow) model loads; build() checks the input and captions again.
    reads = [*build_reads(input_dir, options), ("the --paraphrase-model folder", paraphrase_model)]
    check_output(output, reads, overwrite)
    with _cancel_on_signals() as switch:
        paraphraser = (
            TransformersParaphraser(paraphrase_model, prefix=paraphrase_prefix)
            if paraphrase_model
            else None
        )
        summary = build(
            input_dir, output, options, paraphraser=paraphraser, overwrite=overwrite, cancel=switch
        )
    if as_json:
        click.echo(json.dumps(summary.to_json(), sort_keys=True))
    else:
        splits_text = ", ".join(f"{k} {v}" for k, v in sorted(summary.splits.items()))
        click.echo(
            f"Wrote {summary.triplets} triplets from {summary.pairs} pairs to {summary.output} "
            f"({splits_text}); {summary.rejected} rejected (see rejections.jsonl, datasheet.md)."
        )


@craft.command("audit")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--auditor",
    "auditors",
    multiple=True,
    help="Who audits (repeatable: one private link each) [default: $MTRS_AUDITOR or the login].",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free."
)
@click.option("--db", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--open-browser/--no-browser", default=False, show_default=True)
def audit_command(
    dataset: Path, auditors: tuple[str, ...], port: int, db: Path | None, open_browser: bool
) -> None:
    """Serve the audit page for DATASET on 127.0.0.1 (Ctrl+C stops it; decisions are kept).

    Each auditor gets a link with a secret token, new at every start: the link is the auditor's
    identity, so give each one only their own.
    """
    try:
        from mtrs_geo.craft.audit_app import audit_links, make_audit_server
    except ModuleNotFoundError as exc:  # the extra ``craft`` is missing: say how to install it
        if exc.name not in ("flask", "werkzeug"):
            raise
        raise InputError(str(exc)) from exc

    names = list(auditors) or [_default_auditor()]
    server = make_audit_server(dataset, names, port=port, db_path=db)
    links = audit_links(server)
    for name, url in links.items():
        click.echo(f"Auditing {dataset} as {name} at {url}")
    click.echo(
        "Ctrl+C stops the server. Each link signs decisions as its auditor: keep it private."
    )
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(next(iter(links.values())),)).start()
    try:
        server.serve_forever()
    finally:
        server.server_close()


@craft.command("export")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("output", type=click.Path(path_type=Path))
@click.option(
    "--auditor",
    "auditors",
    multiple=True,
    help="Whose decisions count (repeatable) [default: everyone who decided].",
)
@click.option("--db", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def export_command(
    dataset: Path,
    output: Path,
    auditors: tuple[str, ...],
    db: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Write the accepted triplets of DATASET (edits applied) and the audit log to OUTPUT."""
    from mtrs_geo.craft.export import export

    with _cancel_on_signals() as switch:
        summary = export(
            dataset, output, list(auditors) or None, db_path=db, overwrite=overwrite, cancel=switch
        )
    if as_json:
        click.echo(json.dumps(summary.to_json(), sort_keys=True))
    else:
        click.echo(
            f"Exported {summary.exported} accepted triplets ({summary.edited} edited) to "
            f"{summary.output}; {summary.rejected} rejected, {summary.undecided} undecided, "
            f"{len(summary.conflicts)} in conflict."
        )
