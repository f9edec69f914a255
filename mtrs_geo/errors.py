"""One exception family for everything a user can act on.

Front ends turn :class:`InputError` into exit code 2 (CLI) or a Processing error (QGIS),
:class:`Cancelled` into a clean stop, and any other exception into exit code 1.
"""


class MtrsError(Exception):
    """Base class: the message is meant for the user, on one line.

    ``cli_hint``, when given, names what to do in the command line's terms (an option); the
    ``mtrs`` command prints it after the message, front ends that have no such option (QGIS, the
    JSON events) leave it out.
    """

    exit_code = 1

    def __init__(self, *args: object, cli_hint: str | None = None) -> None:
        super().__init__(*args)
        self.cli_hint = cli_hint


class InputError(MtrsError):
    """Bad input or usage: unreadable file, missing CRS, disjoint footprints, bad option value."""

    exit_code = 2


class ModelError(InputError):
    """A model name or checkpoint that cannot be resolved or does not fit the input."""


class OutputError(MtrsError):
    """An output could not be written (a full disk, a vanished scratch folder).

    The files the run would have replaced are left as they were.
    """

    exit_code = 1


class Cancelled(MtrsError):
    """The user cancelled the run; no output was left behind."""

    exit_code = 130
