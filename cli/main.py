"""Entry point of the ``mtrs`` command: a click group whose commands load lazily.

Each command lives in its own module (``detect``, ``info``, ``batch``, ``models``, ``sample``,
``train``, ``craft``); importing one only when it runs keeps ``mtrs --help`` fast and keeps torch
out of commands that do not need it. For the engine commands (``detect``, ``batch``) SIGINT and
SIGTERM are turned into a cancel before anything else happens (:mod:`mtrs_geo.cli.signals`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from mtrs_geo import __version__
from mtrs_geo.cancel import CancelSwitch
from mtrs_geo.errors import MtrsError

# command name -> (module under mtrs_geo.cli, attribute, short help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "detect": ("detect", "detect", "Find the changes a text query describes between two rasters."),
    "info": ("info", "info", "Show the common grid, overlap and tile count of a pair."),
    "batch": ("batch", "batch", "Run detect for every row of a CSV of pairs."),
    "models": ("models", "models", "List the registered models and what each needs."),
    "sample": ("sample", "sample", "Copy the bundled sample pair into a folder."),
    "train": ("train", "train", "Train MTRefSeg-R1 (stage 1: any change, stage 2: referring)."),
    "evaluate": ("train", "evaluate", "Score a model or a folder of predictions (mIoU, oIoU)."),
    "benchmark": ("train", "benchmark", "Run several models over the same splits into one table."),
    "craft": ("craft", "craft", "Build and audit MTRS benchmarks from change data (CRAFT)."),
    "serve": ("serve", "serve", "Keep the engine warm for a front end (JSON lines on stdio)."),
}
# Commands whose runs a signal cancels cleanly (the others keep Python's own signal handling).
_CANCELLABLE = {"detect", "batch"}
_ENGINE = {"detect", "batch", "info"}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """All command names, in the order of the help page."""
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the command's module and return the command (None if unknown)."""
        if cmd_name not in _COMMANDS:
            return None
        module_name, attr, _ = _COMMANDS[cmd_name]
        try:
            module = importlib.import_module(f"mtrs_geo.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mtrs_geo.cli.{module_name}":
                raise
            return None
        command = getattr(module, attr, None)
        return command if isinstance(command, click.Command) else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands from the table, without importing their modules."""
        rows = [(name, help_) for name, (_, _, help_) in _COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mtrs")
def cli() -> None:
    """mtrs-geo: language-described change detection on georeferenced image pairs."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: user errors exit 2 with one line, internal errors exit 1.

    Set ``MTRS_DEBUG=1`` to see the traceback of an internal error. For ``detect`` and ``batch``
    the signal handlers go in first (exit 130 on SIGINT/SIGTERM, whenever they come); called as
    the console script (``argv`` None) they stay until the process ends, so that a finished run
    cannot be turned into a killed one on its way out.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in args if not arg.startswith("-")), None)
    switch = CancelSwitch() if command in _CANCELLABLE else None
    restore = None
    if command in _ENGINE:
        # GDAL's own error lines (rasterio logs them) would come before our one-line message.
        logging.getLogger("rasterio").addHandler(logging.NullHandler())
    if switch is not None:
        from mtrs_geo.cli.signals import install

        restore = install(switch)
    try:
        _run(args, switch)
    finally:
        if restore is not None and argv is not None:
            restore()


def _run(args: list[str], switch: CancelSwitch | None) -> None:
    """Run one command line and exit with its code (see :func:`main`)."""
    try:
        code = cli.main(args=args, prog_name="mtrs", standalone_mode=False, obj=switch)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except MtrsError as exc:
        hint = f" ({exc.cli_hint})" if exc.cli_hint else ""
        click.echo(f"Error: {exc}{hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        click.echo(f"Internal error: {type(exc).__name__}: {exc}", err=True)
        if os.environ.get("MTRS_DEBUG"):
            raise
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
