"""SIGINT and SIGTERM for the engine commands: a clean cancel, exit 130, never a half-written set.

:func:`install` runs first thing in :func:`mtrs_geo.cli.main.main`, before any import or check of
the command, so a signal in the first seconds is a cancel too. The first signal sets the run's
:class:`~mtrs_geo.cancel.CancelSwitch` (the engine stops at its next check, keeps the files it
would have replaced, and the command exits 130); a second one interrupts at once
(``KeyboardInterrupt``, exit 130). Once the run began renaming its outputs into place, signals
are too late: the run finishes and exits 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from mtrs_geo.cancel import CancelSwitch

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install(switch: CancelSwitch) -> Callable[[], None]:
    """Turn SIGINT/SIGTERM into cancels of ``switch``; return a function restoring the old handlers.

    Outside the main thread signals cannot be caught: nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum: int, frame: FrameType | None) -> None:
        if switch.committed:
            switch.set()  # too late for this run: only remembered
            return
        if switch.is_set():
            raise KeyboardInterrupt
        switch.set()

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
