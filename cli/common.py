"""What the engine commands share: option parsing, progress, run messages, the cancel switch.

The defaults and bounds of the options come from :mod:`mtrs_geo.config`; every check that decides
whether a run may start is the library's (:meth:`mtrs_geo.config.DetectConfig.check`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from mtrs_geo.cancel import CancelSwitch
from mtrs_geo.config import (
    BATCH_SIZE_RANGE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_MODEL,
    DEFAULT_OVERLAP,
    DEFAULT_THRESHOLD,
    DEFAULT_TILE_SIZE,
    MASK_TYPES,
    THRESHOLD_RANGE,
    TILE_SIZE_RANGE,
    check_model_name,
    model_tile_size,
)
from mtrs_geo.errors import InputError, MtrsError

# --------------------------------------------------------------------------------------------------
# Option parsing
# --------------------------------------------------------------------------------------------------


class OneLineUsageError(click.ClickException):
    """A usage error shown as one line (click's default adds the usage text and a hint)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        """Print ``Error: <message>`` on stderr."""
        click.echo(f"Error: {self.format_message()}", err=True)


def emit_json(stream: TextIO, record: dict[str, Any]) -> None:
    """Write one JSON line and flush it."""
    stream.write(json.dumps(record, default=str) + "\n")
    stream.flush()


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
                emit_json(sys.stdout, {"event": "error", "message": message, "exit_code": 2})
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


class AssetList(click.ParamType):
    """A comma-separated list of STAC asset keys (``red,green,blue``)."""

    name = "ASSETS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        """Split the list; refuse an empty key."""
        if isinstance(value, tuple):
            return value
        keys = tuple(key.strip() for key in str(value).split(","))
        if not all(keys):
            self.fail(f"{value!r} is not a comma-separated list of asset keys (e.g. red,blue)")
        return keys


class ExtentType(click.ParamType):
    """``XMIN,YMIN,XMAX,YMAX``: a rectangle in the CRS of ``--extent-crs`` (default: the grid's)."""

    name = "XMIN,YMIN,XMAX,YMAX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Turn ``"1,2,3,4"`` into ``(1.0, 2.0, 3.0, 4.0)`` (the library checks the order)."""
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(part) for part in str(value).split(","))
        except ValueError:
            numbers = ()
        if len(numbers) != 4:
            self.fail(f"{value!r} is not four comma-separated numbers XMIN,YMIN,XMAX,YMAX")
        return numbers


def check_crs(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: refuse a ``--crs`` that is not a CRS (the library's check)."""
    if value is None:
        return None
    from mtrs_geo.grid import parse_crs

    try:
        parse_crs(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def _library_check(check: Callable[[str], object]) -> Callable[..., str]:
    """Make a click callback that runs a library check and shows its message as the error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            check(value)
        except InputError as exc:
            raise click.BadParameter(str(exc)) from exc
        return value

    return callback


def _parse_device(name: str) -> str:
    from mtrs_geo.device import parse_device

    return parse_device(name)


TILE_SIZE_OPTION = click.IntRange(*TILE_SIZE_RANGE)
OVERLAP_OPTION = click.IntRange(min=0)


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``detect`` and ``batch`` (everything except inputs and outputs)."""
    options = [
        click.option(
            "--mask-type",
            type=click.Choice(list(MASK_TYPES)),
            default=MASK_TYPES[0],
            show_default=True,
            help="--mask-out content: float32 probability, or uint8 mask (1 change, 255 nodata).",
        ),
        click.option(
            "--model",
            "model",
            default=DEFAULT_MODEL,
            show_default=True,
            callback=_library_check(check_model_name),
            help=(
                "Registered model name (see `mtrs models`) or a checkpoint folder. The default "
                "answers the query; `cva` is the fast baseline that finds any change."
            ),
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
            "--assets",
            type=AssetList(),
            default=None,
            help="STAC items: the assets stacked as bands, in order (e.g. red,green,blue).",
        ),
        click.option(
            "--pixel-grid",
            is_flag=True,
            help="Pair images without georeferencing (PNG, JPEG) pixel by pixel; pixel units.",
        ),
        click.option(
            "--crs",
            callback=check_crs,
            default=None,
            help="CRS of the common grid (default: the before image's CRS).",
        ),
        click.option(
            "--extent",
            type=ExtentType(),
            default=None,
            help="Process only this rectangle: XMIN,YMIN,XMAX,YMAX (in --extent-crs).",
        ),
        click.option(
            "--extent-crs",
            callback=check_crs,
            default=None,
            help="CRS of --extent (default: the common grid's CRS).",
        ),
        click.option(
            "--aoi",
            type=click.Path(dir_okay=False),
            default=None,
            help="Process only inside the polygons of this vector file (area of interest).",
        ),
        click.option(
            "--resolution",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Pixel size of the common grid in CRS units (default: the before image's).",
        ),
        click.option(
            "--tile-size",
            type=TILE_SIZE_OPTION,
            default=None,
            help="Tile side in pixels [default: the model's: "
            f"{model_tile_size('mtrefseg-r1')} for mtrefseg-r1 (near its training crops), "
            f"{DEFAULT_TILE_SIZE} for cva].",
        ),
        click.option(
            "--overlap",
            type=OVERLAP_OPTION,
            default=DEFAULT_OVERLAP,
            show_default=True,
            help="Overlap between neighbouring tiles in pixels (less than the tile size).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(*BATCH_SIZE_RANGE),
            default=DEFAULT_BATCH_SIZE,
            show_default=True,
            help="Tiles per model call.",
        ),
        click.option(
            "--device",
            default=DEFAULT_DEVICE,
            show_default=True,
            callback=_library_check(_parse_device),
            help=(
                "auto, cpu, cuda, cuda:N or mps. On the CPU mtrefseg-r1 runs in ONNX Runtime "
                "(MTRS_RUNTIME=torch: in torch)."
            ),
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(*THRESHOLD_RANGE, min_open=True),
            default=DEFAULT_THRESHOLD,
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
        click.option("--quiet", is_flag=True, help="No progress bar, no summary and no notes."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_scheduler(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: refuse a scheduler that is neither an address nor local:N."""
    if value is None:
        return None
    from mtrs_geo.distributed import parse_scheduler

    try:
        parse_scheduler(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def engine_settings(options: dict[str, Any]) -> dict[str, Any]:
    """Map the shared options to DetectConfig fields."""
    return {
        "mask_type": options["mask_type"],
        "model": options["model"],
        "bands_before": options["bands"],
        "bands_after": options["after_bands"],
        "assets": options["assets"],
        "pixel_grid": options["pixel_grid"],
        "crs": options["crs"],
        "resolution": options["resolution"],
        "tile_size": options["tile_size"] or 0,
        "overlap": options["overlap"],
        "batch_size": options["batch_size"],
        "device": options["device"],
        "threshold": options["threshold"],
        "min_area": options["min_area"],
        "simplify": options["simplify"],
        "any_change": options["any_change"],
        "extent": options["extent"],
        "extent_crs": options["extent_crs"],
        "aoi": Path(options["aoi"]) if options["aoi"] else None,
    }


def pair_paths(
    before: str | None, after: str | None, sample: bool
) -> tuple[Path | str, Path | str]:
    """Return the input pair: the two arguments, or the bundled sample with ``--sample``.

    The arguments stay strings: a URL or a list of files is not a path.
    """
    if sample:
        if before or after:
            raise InputError("give either BEFORE and AFTER or --sample, not both")
        from mtrs_geo.sample import sample_pair

        return sample_pair()
    if not before or not after:
        raise InputError("give the BEFORE and AFTER images (or --sample for the bundled pair)")
    return before, after


# --------------------------------------------------------------------------------------------------
# Progress, run messages, cancellation
# --------------------------------------------------------------------------------------------------


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
                emit_json(sys.stdout, {"event": "start", "tiles": total})
                self._started = True
            emit_json(sys.stdout, {"event": "progress", "done": done, "total": total})
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


def progress_mode(quiet: bool, as_json: bool, progress_json: bool) -> str:
    """Pick how progress is shown: ``json`` lines, a ``bar`` on a terminal, or ``none``."""
    if progress_json:
        return "json"
    if quiet or as_json or not sys.stderr.isatty():
        return "none"
    return "bar"


class MessagePrinter:
    """Shows a run's messages: notes on stderr once each (unless quiet), stages with progress.

    Stages (what the setup is loading) go to stderr when a progress bar is shown, and become
    ``{"event": "stage", "message": ...}`` lines with ``--progress-json``.
    """

    def __init__(self, mode: str, quiet: bool) -> None:
        self.mode = mode
        self.quiet = quiet
        self._said: set[str] = set()

    def __call__(self, message: Any) -> None:
        """Show one :class:`~mtrs_geo.pipeline.RunMessage`."""
        if message.kind == "note":
            if not self.quiet and message.text not in self._said:
                self._said.add(message.text)
                click.echo(message.text, err=True)
        elif self.mode == "json":
            emit_json(sys.stdout, {"event": "stage", "message": message.text})
        elif self.mode == "bar":
            click.echo(f"{message.text} ...", err=True)


def cancel_switch() -> CancelSwitch:
    """Return the switch that the signal handlers set (a fresh one outside ``main``)."""
    context = click.get_current_context(silent=True)
    switch = context.find_object(CancelSwitch) if context is not None else None
    return switch if switch is not None else CancelSwitch()


def summary_line(result: Any) -> str:
    """One line about a finished run: polygons, files, tiles, seconds."""
    outputs = ", ".join(str(path) for path in result.outputs) or "no file"
    skipped = f", {result.tiles_skipped} skipped" if result.tiles_skipped else ""
    return (
        f"{result.polygons} polygon{'s' if result.polygons != 1 else ''} -> {outputs} "
        f"({result.tiles_total} tiles{skipped}, {result.seconds:.1f} s)"
    )


def error_event(exc: BaseException) -> dict[str, Any]:
    """Return the ``--progress-json`` error event of an exception (with its exit code)."""
    code = exc.exit_code if isinstance(exc, MtrsError) else 1
    if isinstance(exc, KeyboardInterrupt):
        code = 130
    message = str(exc) or type(exc).__name__
    return {"event": "error", "message": message, "exit_code": code}


# --------------------------------------------------------------------------------------------------
# Time series and several queries
# --------------------------------------------------------------------------------------------------


class DateList(click.ParamType):
    """A comma-separated list of acquisition dates, one per image (``2019-05-01,2021-06-01``)."""

    name = "DATES"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        """Split the list; the library checks each date."""
        if isinstance(value, tuple):
            return value
        dates = tuple(date.strip() for date in str(value).split(","))
        if not all(dates):
            self.fail(f"{value!r} is not a comma-separated list of dates (e.g. 2019,2021-06-01)")
        return dates


def image_paths(images: Sequence[str], sample: bool) -> tuple[Path | str, ...]:
    """Return the input images, ``BEFORE AFTER [LATER...]``, or the bundled pair (``--sample``)."""
    before = images[0] if images else None
    after = images[1] if len(images) > 1 else None
    return (*pair_paths(before, after, sample), *images[2:])
