"""Fixtures shared by the tests (the QGIS suite's Python loads this file too: no heavy imports).

Helpers are imported one way, as top-level modules of ``tests/`` (``from scenes import make_pair``,
``from cli_run import run_mtrs``, ``from fixtures_train.tiny_models import TINY_TEXT``), never as
``tests.scenes``: the two names would load two copies of a module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from scenes import ScenePair


@pytest.fixture(scope="session", autouse=True)
def query_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Encoded queries (``mtrs_geo.models.query_cache``) go to a temporary folder, not ~/.cache."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``dask scheduler`` and two ``dask worker`` processes (no nanny) on 127.0.0.1; its address.

    One per test module (a test may kill a worker).
    """
    import json
    import subprocess
    import sys
    import time

    dask = Path(sys.executable).with_name("dask")
    timeout = 120
    folder = tmp_path_factory.mktemp("dask")
    info = folder / "scheduler.json"
    host = ["--host", "127.0.0.1", "--no-dashboard"]

    # One thread per worker process for OpenMP and BLAS, as a nanny would set it: without a nanny
    # torch would take every core and its float rounding would follow the machine's load.
    one_thread = {
        name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    environment = {**os.environ, **one_thread}

    def start(*args: str) -> subprocess.Popen[bytes]:
        quiet = subprocess.DEVNULL
        command = [str(dask), *args, *host]
        return subprocess.Popen(command, stdout=quiet, stderr=quiet, env=environment)

    processes = [start("scheduler", "--port", "0", "--scheduler-file", str(info))]
    try:
        deadline = time.monotonic() + timeout
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        for name in ("w1", "w2"):
            worker = ("worker", address, "--no-nanny", "--nthreads", "1", "--name", name)
            processes.append(start(*worker))
        from dask.distributed import Client

        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(2, timeout=timeout)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
