"""Loading checkpoints quietly: the engine and the trainer draw their own progress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide the ``transformers`` weight-loading progress bars inside the block."""
    from transformers.utils import logging as hf_logging  # heavy: only when loading

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
