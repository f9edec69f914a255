"""Fixtures shared by the tests (the QGIS suite's Python loads this file too: no heavy imports)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Run torch on one thread: small tensors gain nothing from two, lose much on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
