"""Loading checkpoints quietly, into memory of their own (not mapped from the weights file)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def own_weights(module: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter and buffer of ``module`` memory of its own; return ``module``.

    ``from_pretrained`` leaves CPU weights memory-mapped from ``model.safetensors``: a checkpoint
    written again in place while a model loaded from it runs (a retrained teacher, a folder
    reinstalled under a serving process) would change that model's weights under it (measured:
    a training run's teacher overwritten mid-run made its loss NaN). A copy costs the weights'
    size once.
    """
    import torch

    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if not tensor.is_meta:
                tensor.data = tensor.data.clone()
    return module
