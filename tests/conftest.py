"""Fixtures shared by the tests (the QGIS suite's Python loads this file too: no heavy imports).

Helpers are imported one way, as top-level modules of ``tests/`` (``from scenes import make_pair``,
``from cli_run import run_mtrs``, ``from fixtures_train.tiny_models import TINY_TEXT``), never as
``tests.scenes``: the two names would load two copies of a module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from scenes import ScenePair


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Run torch on one thread: small tensors gain nothing from two, lose much on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pair(tmp_path: Path) -> ScenePair:
    """The default synthetic pair (``scenes.make_pair``: UTM, 256 x 256 px) in ``tmp_path/data``.

    Made for each test (about 30 ms), so a test may overwrite or delete its files.
    """
    from scenes import make_pair  # imported here: scenes needs rasterio (see the module docstring)

    return make_pair(tmp_path / "data")
