"""The cancel flag of a run, and the point after which a run can no longer be cancelled.

A run writes every output under a scratch name first; renaming them into place is its commit. A
cancel that arrives before the commit stops the run and keeps the files it would have replaced; one
that arrives once the commit began is too late: the run finishes and keeps its new files. Either
way, old and new outputs are never mixed and never both lost.
"""

from __future__ import annotations

import threading

from mtrs_geo.errors import Cancelled

CANCELLED_MESSAGE = "cancelled: no output was written"


class CancelSwitch(threading.Event):
    """A :class:`threading.Event` that a run's commit closes: later ``set()`` calls are ignored.

    Front ends that cancel from a signal handler use it to tell a cancel that can still stop the
    run from one that comes too late (see :attr:`committed`). A plain :class:`threading.Event`
    works too, without that guarantee at the commit.
    """

    def __init__(self) -> None:
        super().__init__()
        # Reentrant: a signal handler runs in the main thread, possibly while the main thread
        # holds the lock in begin_commit().
        self._guard = threading.RLock()
        self._committed = False
        self._late = False

    @property
    def committed(self) -> bool:
        """Whether a run started renaming its outputs into place (a cancel is too late now)."""
        return self._committed

    def set(self) -> None:
        """Ask the run to stop; after its commit began, only remember that it was asked."""
        with self._guard:
            if self._committed:
                self._late = True
                return
            super().set()

    def begin_commit(self) -> None:
        """Close the switch before a run renames its outputs into place.

        Raises:
            Cancelled: the switch was set before; nothing may be renamed.

        """
        with self._guard:
            if self.is_set():
                raise Cancelled(CANCELLED_MESSAGE)
            self._committed = True

    def reopen(self) -> None:
        """Accept cancels again (the next run of a batch); one that came too late now counts."""
        with self._guard:
            self._committed = False
            if self._late:
                self._late = False
                super().set()


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(CANCELLED_MESSAGE)


def begin_commit(cancel: threading.Event | None) -> None:
    """Enter a run's commit: refuse if cancelled, and close a :class:`CancelSwitch`."""
    if isinstance(cancel, CancelSwitch):
        cancel.begin_commit()
    else:
        check_cancel(cancel)
