"""``mtrs detect``, ``info``, ``batch``, ``models``, ``sample``: thin click shells over the engine.

All the work happens in :mod:`mtrs_geo.pipeline`; this module turns options into a
:class:`~mtrs_geo.config.DetectConfig`, shows progress, turns SIGINT/SIGTERM into a clean cancel,
and prints results. Errors a user can act on exit 2 with one line (:func:`mtrs_geo.cli.main.main`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import click

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import Cancelled, InputError, MtrsError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_BATCH_COLUMNS = ("before", "after", "query", "output")


# --------------------------------------------------------------------------------------------------
# Option parsing
# --------------------------------------------------------------------------------------------------


class OneLineUsageError(click.ClickException):
    """A usage error shown as one line (click's default adds the usage text and a hint)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        """Print ``Error: <message>`` on stderr."""
        click.echo(f"Error: {self.format_message()}", err=True)


class EngineCommand(click.Command):
    """A command whose option errors exit 2 with one line (and a JSON error event when asked)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse like click, but re-raise usage errors as :class:`OneLineUsageError`."""
        wants_json = "--progress-json" in args  # click consumes ``args`` while parsing
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            message = f"{exc.format_message()} (see: mtrs {self.name} --help)"
            if wants_json:
                _emit_json(sys.stdout, {"event": "error", "message": message, "exit_code": 2})
            raise OneLineUsageError(message) from exc


class BandList(click.ParamType):
    """Comma-separated 1-based band indexes, e.g. ``1,2,3`` or ``4,3,2``."""

    name = "BANDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Turn ``"4,3,2"`` into ``(4, 3, 2)``."""
        if isinstance(value, tuple):
            return value
        try:
            bands = tuple(int(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of band numbers (e.g. 1,2,3)")
        if not bands or any(band < 1 for band in bands):
            self.fail(f"{value!r}: bands are numbered from 1 (e.g. 1,2,3)")
        return bands


def _check_crs(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(value)
    except (CRSError, ValueError) as exc:
        raise click.BadParameter(f"{value!r} is not a CRS (try EPSG:32633 or EPSG:4326)") from exc
    return value


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _DEVICE_PATTERN.match(value):
        raise click.BadParameter(f"{value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


def _check_model(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from mtrs_geo.model_api import registered_names

    if value in registered_names() or Path(value).is_dir():
        return value
    known = ", ".join(registered_names())
    raise click.BadParameter(f"unknown model {value!r}: use one of {known} or a checkpoint folder")


def _engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``detect`` and ``batch`` (everything except inputs and outputs)."""
    options = [
        click.option(
            "--mask-type",
            type=click.Choice(["probability", "binary"]),
            default="probability",
            show_default=True,
            help="--mask-out content: float32 probability, or uint8 mask (1 change, 255 nodata).",
        ),
        click.option(
            "--model",
            "model",
            default="cva",
            show_default=True,
            callback=_check_model,
            help="Registered model name (see `mtrs models`) or a checkpoint folder.",
        ),
        click.option(
            "--bands",
            type=BandList(),
            default=None,
            help="1-based bands of the before image (and of the after image unless --after-bands).",
        ),
        click.option(
            "--after-bands",
            type=BandList(),
            default=None,
            help="1-based bands of the after image, in the same order as --bands.",
        ),
        click.option(
            "--crs",
            callback=_check_crs,
            default=None,
            help="CRS of the common grid (default: the before image's CRS).",
        ),
        click.option(
            "--resolution",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Pixel size of the common grid in CRS units (default: the before image's).",
        ),
        click.option(
            "--tile-size",
            type=click.IntRange(32, 8192),
            default=512,
            show_default=True,
            help="Tile side in pixels.",
        ),
        click.option(
            "--overlap",
            type=click.IntRange(min=0),
            default=64,
            show_default=True,
            help="Overlap between neighbouring tiles in pixels (less than the tile size).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 1024),
            default=4,
            show_default=True,
            help="Tiles per model call.",
        ),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            callback=_check_device,
            help="auto, cpu, cuda, cuda:N or mps.",
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(0, 1, min_open=True),
            default=0.5,
            show_default=True,
            help="Probability at or above which a pixel is changed.",
        ),
        click.option(
            "--min-area",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Drop polygons smaller than this ground area (m^2).",
        ),
        click.option(
            "--simplify",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Simplify polygons with this tolerance in metres (0: exact pixel outlines).",
        ),
        click.option(
            "--any-change",
            is_flag=True,
            help="Ignore the query: find any change (stage-1 mode of query-aware models).",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar and no summary."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _engine_settings(options: dict[str, Any]) -> dict[str, Any]:
    """Map the shared options to DetectConfig fields."""
    return {
        "mask_type": options["mask_type"],
        "model": options["model"],
        "bands_before": options["bands"],
        "bands_after": options["after_bands"],
        "crs": options["crs"],
        "resolution": options["resolution"],
        "tile_size": options["tile_size"],
        "overlap": options["overlap"],
        "batch_size": options["batch_size"],
        "device": options["device"],
        "threshold": options["threshold"],
        "min_area": options["min_area"],
        "simplify": options["simplify"],
        "any_change": options["any_change"],
    }


def check_outputs(config: DetectConfig) -> None:
    """Refuse a run that would write nothing, or write both outputs to one file.

    The engine checks extensions and folders itself, before any heavy work.

    Raises:
        InputError: no output at all, or ``-o`` and ``--mask-out`` name the same file.

    """
    if config.output is None and config.mask_out is None:
        raise InputError("nothing to write: give a vector output with -o and/or --mask-out")
    if config.output is not None and config.output == config.mask_out:
        raise InputError("-o and --mask-out must be different files")


# --------------------------------------------------------------------------------------------------
# Progress, cancellation, output
# --------------------------------------------------------------------------------------------------


def _emit_json(stream: TextIO, record: dict[str, Any]) -> None:
    stream.write(json.dumps(record, default=str) + "\n")
    stream.flush()


class ProgressReporter:
    """The ``progress(done, total)`` callback: a tqdm bar, JSON lines, or nothing."""

    def __init__(self, mode: str, label: str = "tiles") -> None:
        self.mode = mode  # "bar" | "json" | "none"
        self.label = label
        self._bar: Any = None
        self._started = False

    def __call__(self, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` tiles are finished."""
        if self.mode == "json":
            if not self._started:
                _emit_json(sys.stdout, {"event": "start", "tiles": total})
                self._started = True
            _emit_json(sys.stdout, {"event": "progress", "done": done, "total": total})
        elif self.mode == "bar":
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, unit="tiles", desc=self.label, file=sys.stderr, dynamic_ncols=True
                )
            self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Close the bar if one was shown."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress_mode(quiet: bool, as_json: bool, progress_json: bool) -> str:
    if progress_json:
        return "json"
    if quiet or as_json or not sys.stderr.isatty():
        return "none"
    return "bar"


@contextlib.contextmanager
def cancel_on_signals(cancel: threading.Event) -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into ``cancel.set()``; a second one interrupts at once.

    The engine checks ``cancel`` between batches, removes its partial outputs and raises
    :class:`~mtrs_geo.errors.Cancelled`. Outside the main thread signals cannot be caught, and the
    block runs without handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_detect(config: DetectConfig, progress: ProgressReporter) -> Any:
    """Run one detection with signal-driven cancellation; return the engine's ``DetectResult``.

    Raises:
        Cancelled: SIGINT/SIGTERM arrived; no output file is left.
        MtrsError: any user-facing engine error.

    """
    from mtrs_geo.pipeline import detect

    cancel = threading.Event()
    with cancel_on_signals(cancel):
        try:
            result = detect(config, progress=progress, cancel=cancel)
        finally:
            progress.close()
        if cancel.is_set():
            # The signal came after the last check of the engine: honour it anyway.
            from mtrs_geo.write import remove_output

            for path in result.outputs:
                remove_output(Path(path))
            raise Cancelled("cancelled: no output was written")
    return result


def _summary_line(result: Any) -> str:
    outputs = ", ".join(str(path) for path in result.outputs) or "no file"
    skipped = f", {result.tiles_skipped} skipped" if result.tiles_skipped else ""
    return (
        f"{result.polygons} polygon{'s' if result.polygons != 1 else ''} -> {outputs} "
        f"({result.tiles_total} tiles{skipped}, {result.seconds:.1f} s)"
    )


def _pair_paths(before: str | None, after: str | None, sample: bool) -> tuple[Path, Path]:
    """Return the input pair: the two arguments, or the bundled sample with ``--sample``."""
    if sample:
        if before or after:
            raise InputError("give either BEFORE and AFTER or --sample, not both")
        from mtrs_geo.sample import sample_pair

        return sample_pair()
    if not before or not after:
        raise InputError("give the BEFORE and AFTER images (or --sample for the bundled pair)")
    return Path(before), Path(after)


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


@click.command(cls=EngineCommand)
@click.argument("before", required=False)
@click.argument("after", required=False)
@click.option(
    "-q", "--query", default="", help="The change to find, in words (e.g. 'new buildings')."
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Polygons: .geojson .gpkg .fgb .shp"
)
@click.option(
    "--mask-out", type=click.Path(dir_okay=False), help="Raster output: a Cloud-Optimized GeoTIFF."
)
@click.option("--sample", is_flag=True, help="Use the bundled sample pair as BEFORE and AFTER.")
@_engine_options
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary.")
@click.option(
    "--progress-json", is_flag=True, help="Print progress as JSON lines (for front ends)."
)
def detect(
    before: str | None,
    after: str | None,
    query: str,
    output: str | None,
    mask_out: str | None,
    sample: bool,
    as_json: bool,
    progress_json: bool,
    **options: Any,
) -> None:
    """Find the changes described by a text query between BEFORE and AFTER (two rasters).

    Writes change polygons (-o) and/or a probability or mask COG (--mask-out). Example:

        mtrs detect before.tif after.tif -q "new buildings" -o changes.geojson
    """
    try:
        before_path, after_path = _pair_paths(before, after, sample)
        config = DetectConfig(
            before=before_path,
            after=after_path,
            query=query,
            output=Path(output) if output else None,
            mask_out=Path(mask_out) if mask_out else None,
            **_engine_settings(options),
        )
        check_outputs(config)
        mode = _progress_mode(options["quiet"], as_json, progress_json)
        result = run_detect(config, ProgressReporter(mode))
    except (MtrsError, KeyboardInterrupt, Exception) as exc:
        if progress_json:
            code = exc.exit_code if isinstance(exc, MtrsError) else 1
            if isinstance(exc, KeyboardInterrupt):
                code = 130
            message = str(exc) or type(exc).__name__
            _emit_json(sys.stdout, {"event": "error", "message": message, "exit_code": code})
        raise
    summary = result.to_json()
    if progress_json:
        _emit_json(sys.stdout, {"event": "done", **summary})
    elif as_json:
        _emit_json(sys.stdout, summary)
    elif not options["quiet"]:
        click.echo(_summary_line(result))


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
        lines.append(("overlap", f"{area / 1e6:,.3f} km^2 ({area:,.0f} m^2)"))
        tiles, size, overlap = info.pop("tiles"), info.pop("tile_size"), info.pop("overlap")
        lines.append(("tiles", f"{tiles} of {size} px, overlap {overlap} px"))
        bands_b = ",".join(str(b) for b in info.pop("bands_before"))
        bands_a = ",".join(str(b) for b in info.pop("bands_after"))
        lines.append(("bands", f"before {bands_b}; after {bands_a}"))
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, list | dict) else str(value)
        lines.append((key.replace("_", " "), shown))
    width = max(len(label) for label, _ in lines) if lines else 0
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)


@click.command(cls=EngineCommand)
@click.argument("before", required=False)
@click.argument("after", required=False)
@click.option("--sample", is_flag=True, help="Describe the bundled sample pair.")
@click.option("--bands", type=BandList(), default=None, help="1-based bands of the before image.")
@click.option(
    "--after-bands", type=BandList(), default=None, help="1-based bands of the after image."
)
@click.option("--crs", callback=_check_crs, default=None, help="CRS of the common grid.")
@click.option(
    "--resolution", type=click.FloatRange(min=0, min_open=True), default=None, help="Pixel size."
)
@click.option(
    "--tile-size", type=click.IntRange(32, 8192), default=512, show_default=True, help="Tile side."
)
@click.option(
    "--overlap", type=click.IntRange(min=0), default=64, show_default=True, help="Tile overlap."
)
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON line.")
def info(
    before: str | None,
    after: str | None,
    sample: bool,
    bands: tuple[int, ...] | None,
    after_bands: tuple[int, ...] | None,
    crs: str | None,
    resolution: float | None,
    tile_size: int,
    overlap: int,
    as_json: bool,
) -> None:
    """Show the common grid of BEFORE and AFTER: CRS, size, pixel size, overlap area, tile count."""
    from mtrs_geo.pipeline import describe_pair

    before_path, after_path = _pair_paths(before, after, sample)
    config = DetectConfig(
        before=before_path,
        after=after_path,
        bands_before=bands,
        bands_after=after_bands,
        crs=crs,
        resolution=resolution,
        tile_size=tile_size,
        overlap=overlap,
    )
    description = _plain(describe_pair(config))
    if as_json:
        _emit_json(sys.stdout, description)
        return
    click.echo(format_pair_info(description))


def read_pairs_csv(path: Path) -> list[dict[str, str]]:
    """Read a batch CSV (columns before, after, query, output; optional mask_out).

    Relative paths are resolved against the CSV's folder.

    Raises:
        InputError: unreadable file, missing columns, or no rows.

    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [name.strip() for name in reader.fieldnames or []]
            rows = [
                {key.strip(): (value or "").strip() for key, value in row.items() if key}
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    missing = [column for column in _BATCH_COLUMNS if column not in fields]
    if missing:
        raise InputError(
            f"{path.name} lacks the column(s) {', '.join(missing)}: "
            f"the header must name {', '.join(_BATCH_COLUMNS)}"
        )
    rows = [row for row in rows if any(row.values())]
    if not rows:
        raise InputError(f"{path.name} has no rows")
    base = path.parent
    for row in rows:
        for column in ("before", "after", "output", "mask_out"):
            if row.get(column):
                row[column] = str(base / Path(row[column]).expanduser())
    return rows


@click.command(cls=EngineCommand)
@click.argument("pairs_csv", metavar="PAIRS.csv", type=click.Path(dir_okay=False))
@click.option(
    "--mask-out-dir",
    "mask_out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write each row's mask COG here, named after its output.",
)
@_engine_options
@click.option("--json", "as_json", is_flag=True, help="One JSON line per row, then a summary line.")
def batch(pairs_csv: str, mask_out_dir: str | None, as_json: bool, **options: Any) -> None:
    """Run detect for every row of PAIRS.csv (columns before, after, query, output).

    Relative paths are resolved against the CSV's folder; an optional mask_out column names a mask
    COG per row. A failing row is reported and the batch goes on; exit code 1 if any row failed.
    """
    rows = read_pairs_csv(Path(pairs_csv))
    settings = _engine_settings(options)
    quiet = options["quiet"]
    failures = 0
    for number, row in enumerate(rows, start=1):
        record: dict[str, Any] = {"row": number, "output": row.get("output", "")}
        try:
            if not row.get("before") or not row.get("after"):
                raise InputError("before and after must both be given")
            mask_out = Path(row["mask_out"]) if row.get("mask_out") else None
            if mask_out is None and mask_out_dir and row.get("output"):
                mask_out = Path(mask_out_dir) / (Path(row["output"]).stem + ".tif")
            config = DetectConfig(
                before=Path(row["before"]),
                after=Path(row["after"]),
                query=row.get("query", ""),
                output=Path(row["output"]) if row.get("output") else None,
                mask_out=mask_out,
                **settings,
            )
            check_outputs(config)
            mode = _progress_mode(quiet, as_json, False)
            result = run_detect(config, ProgressReporter(mode, label=f"row {number}"))
            record |= {"status": "ok", **result.to_json()}
            line = f"row {number}: ok, {_summary_line(result)}"
        except Cancelled:
            raise
        except MtrsError as exc:
            failures += 1
            record |= {"status": "failed", "exit_code": exc.exit_code, "message": str(exc)}
            line = f"row {number}: FAILED: {exc}"
        except Exception as exc:  # noqa: BLE001 - one bad row must not stop the batch
            failures += 1
            message = f"internal error: {type(exc).__name__}: {exc}"
            record |= {"status": "failed", "exit_code": 1, "message": message}
            line = f"row {number}: FAILED: {message}"
        if as_json:
            _emit_json(sys.stdout, record)
        elif not quiet or record["status"] == "failed":
            click.echo(line, err=record["status"] == "failed")
    total = len(rows)
    if as_json:
        _emit_json(sys.stdout, {"rows": total, "ok": total - failures, "failed": failures})
    elif not quiet:
        click.echo(f"{total - failures} of {total} rows done, {failures} failed")
    if failures:
        sys.exit(1)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON lines.")
def models(as_json: bool) -> None:
    """List the registered models: what each needs, query-aware or not, size, training data."""
    from mtrs_geo.model_api import model_info, registered_names

    for name in registered_names():
        record: dict[str, Any]
        try:
            described = model_info(name)
            record = {"available": True, **asdict(described)}
        except Exception as exc:  # noqa: BLE001 - a model that cannot load is listed, not fatal
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            record = {"name": name, "available": False, "reason": reason}
        if as_json:
            _emit_json(sys.stdout, record)
            continue
        if not record["available"]:
            click.echo(f"{name}\n  not available here: {record['reason']}\n")
            continue
        bands = record["in_channels"] if record["in_channels"] is not None else "any (same in both)"
        click.echo(
            f"{name}: {record['description']}\n"
            f"  query-aware: {'yes' if record['query_aware'] else 'no (the query is ignored)'}\n"
            f"  bands:       {bands}\n"
            f"  needs:       {record['needs']}\n"
            f"  size:        {record['size']}\n"
            f"  trained on:  {record['trained_on']}\n"
        )


@click.command()
@click.argument("folder", type=click.Path(file_okay=False))
def sample(folder: str) -> None:
    """Copy the bundled sample pair (and its SOURCE.md) into FOLDER, created if needed."""
    from mtrs_geo.sample import copy_sample

    written = copy_sample(Path(folder))
    for path in written or []:
        click.echo(str(path))
