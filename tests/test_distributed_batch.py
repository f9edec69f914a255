"""Batches on a real Dask cluster: a scheduler and two workers on 127.0.0.1, started by the tests.

Results must equal the serial run; a worker killed mid-row has its row run again elsewhere, and no
partial file is left either way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from cli_run import run_mtrs
from scenes import ImageSpec, make_pair

from mtrs_geo.batch import BatchRow, RowOutcome, batch_configs, read_pairs_csv
from mtrs_geo.config import DetectConfig
from mtrs_geo.distributed import STOP_TIMEOUT_S, parse_scheduler, run_batch_on_cluster
from mtrs_geo.errors import InputError

START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four rows over two generated pairs (256 and 1024 px), each row writing a GPKG."""
    folder = tmp_path_factory.mktemp("rows")
    make_pair(folder / "small")
    make_pair(folder / "large", before=ImageSpec(pixel_size_m=2.5))
    lines = ["before,after,query,output"]
    for number, scene in enumerate(("small", "large", "small", "large"), start=1):
        lines.append(f"{scene}/before.tif,{scene}/after.tif,,out/row{number}.gpkg")
    (folder / "out").mkdir()
    table = folder / "pairs.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    """Every mask COG in ``folder`` by name."""
    found = {}
    for path in sorted(folder.glob("*.tif")):
        with rasterio.open(path) as ds:
            found[path.name] = ds.read(1)
    return found


def test_batch_on_the_cluster_equals_the_serial_run(
    cluster: str, pairs_csv: Path, tmp_path: Path
) -> None:
    serial_dir, dask_dir = tmp_path / "serial", tmp_path / "dask"
    serial_dir.mkdir()
    dask_dir.mkdir()

    serial = run_mtrs("batch", pairs_csv, "--mask-out-dir", serial_dir, "--json")
    remote = run_mtrs("batch", pairs_csv, "--mask-out-dir", dask_dir, "--json",
                      "--scheduler", cluster)  # fmt: skip

    assert serial.code == 0 and remote.code == 0, remote.err
    rows = [json.loads(line) for line in remote.out.splitlines()]
    assert sorted(row["row"] for row in rows[:-1]) == [1, 2, 3, 4]
    assert rows[-1] == {"rows": 4, "ok": 4, "failed": 0}
    polygons = {
        row["row"]: row["polygons"] for row in map(json.loads, serial.out.splitlines()[:-1])
    }
    assert {row["row"]: row["polygons"] for row in rows[:-1]} == polygons
    expected, got = masks_of(serial_dir), masks_of(dask_dir)
    assert expected.keys() == got.keys() and len(got) == 4
    for name, mask in expected.items():
        np.testing.assert_array_equal(got[name], mask)


def test_a_killed_worker_has_its_row_run_elsewhere(cluster: str, tmp_path: Path) -> None:
    from dask.distributed import Client

    pair = make_pair(tmp_path / "scene", before=ImageSpec(pixel_size_m=1.25))  # 2048 px
    out = tmp_path / "out"
    out.mkdir()
    template = DetectConfig(before=Path(), after=Path(), mask_out=None)
    rows = batch_configs(
        [{"before": str(pair.before), "after": str(pair.after), "query": "",
          "output": str(out / "changes.gpkg")}],
        template, out,
    )  # fmt: skip
    outcomes: list[RowOutcome] = []
    runner = threading.Thread(
        target=lambda: outcomes.extend(run_batch_on_cluster(rows, cluster, on_row=lambda o: None))
    )
    with Client(cluster, timeout=START_TIMEOUT_S) as client:
        pids = client.run(os.getpid)
        runner.start()
        busy: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while not busy and time.monotonic() < deadline:
            busy = [worker for worker, keys in client.processing().items() if keys]
            time.sleep(0.05)
        assert busy, "the row never started"
        time.sleep(0.5)  # into the row
        os.kill(pids[busy[0]], signal.SIGKILL)
        runner.join(timeout=300)
        assert not runner.is_alive()
        survivors = set(client.scheduler_info()["workers"])

    assert busy[0] not in survivors
    assert [(o.number, o.ok) for o in outcomes] == [(1, True)], outcomes
    assert sorted(p.name for p in out.iterdir()) == ["changes.gpkg", "changes.tif"]


def test_a_row_that_fails_on_a_worker_is_reported_and_the_batch_goes_on(
    cluster: str, tmp_path: Path, pairs_csv: Path
) -> None:
    table = tmp_path / "pairs.csv"
    base = pairs_csv.parent
    table.write_text(
        "before,after,query,output\n"
        f"{base}/small/before.tif,{base}/small/after.tif,,{tmp_path}/a.gpkg\n"
        f"{base}/small/before.tif,{base}/nowhere.tif,,{tmp_path}/b.gpkg\n"
    )
    result = run_mtrs("batch", table, "--scheduler", cluster, "--quiet")
    assert result.code == 1
    assert "row 2: FAILED: after image" in result.err and "does not exist" in result.err
    assert (tmp_path / "a.gpkg").exists() and not (tmp_path / "b.gpkg").exists()


def test_schedulers_are_parsed_and_bad_ones_refused() -> None:
    assert parse_scheduler("local:3").workers == 3
    assert parse_scheduler("10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    assert parse_scheduler("tcp://h:1").address == "tcp://h:1"
    for bad in ("local:0", "local:x", "tcp://", "justahost"):
        with pytest.raises(InputError):
            parse_scheduler(bad)
    result = run_mtrs("batch", "x.csv", "--scheduler", "local:0")
    assert result.code == 2 and "local:N needs a number of workers" in result.err


def test_a_local_cluster_runs_the_rows(pairs_csv: Path, tmp_path: Path) -> None:
    planned = batch_configs(
        read_pairs_csv(pairs_csv)[:1], DetectConfig(before=Path(), after=Path())
    )
    assert planned[0].config is not None
    config = replace(planned[0].config, output=tmp_path / "one.gpkg")

    outcomes = run_batch_on_cluster([BatchRow(1, config)], "local:1", on_row=lambda o: None)

    assert [(o.number, o.ok) for o in outcomes] == [(1, True)]
    assert (tmp_path / "one.gpkg").exists()


def test_a_batch_cancelled_on_a_cluster_says_which_rows_did_not_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtrs_geo.distributed
    from mtrs_geo.errors import Cancelled

    pair = make_pair(tmp_path / "data")
    table = tmp_path / "pairs.csv"
    table.write_text(
        "before,after,query,output\n"
        + "".join(f"{pair.before},{pair.after},,{n}.gpkg\n" for n in ("one", "two", "three"))
    )

    def cancelled_after_row_one(rows, scheduler, *, on_row, cancel=None):  # type: ignore[no-untyped-def]
        on_row(RowOutcome(1, rows[0].output, False, 2, "a bad row"))
        raise Cancelled("cancelled: no output was written")

    monkeypatch.setattr(mtrs_geo.distributed, "run_batch_on_cluster", cancelled_after_row_one)

    result = run_mtrs("batch", table, "--scheduler", "local:1", "--json")

    # A runner that gives no account of its rows: those not reported are "not finished".
    message = "cancelled: 1 of 3 rows finished; rows 2, 3 not finished"
    assert (result.code, result.err.strip()) == (130, f"Error: {message}")
    assert json.loads(result.out.splitlines()[-1]) == {
        "rows": 3, "ok": 0, "failed": 1, "cancelled": [2, 3], "not_run": [],
        "exit_code": 130, "message": message,
    }  # fmt: skip


def _rows_on_the_large_pair(table: Path, folder: Path, count: int) -> list[BatchRow]:
    """``count`` rows over the 1024 px pair (seconds a row), row N writing ``folder/N.gpkg``."""
    template = DetectConfig(before=Path(), after=Path())
    config = batch_configs(read_pairs_csv(table), template)[1].config
    assert config is not None
    return [BatchRow(n, replace(config, output=folder / f"{n}.gpkg")) for n in range(1, count + 1)]


def test_a_cancel_stops_the_running_row_before_its_commit_and_starts_no_other(
    pairs_csv: Path, tmp_path: Path
) -> None:
    from mtrs_geo.batch import BatchCancelled

    rows = _rows_on_the_large_pair(pairs_csv, tmp_path, 4)
    cancel = threading.Event()

    def cancel_after_the_first(outcome: RowOutcome) -> None:
        cancel.set()

    with pytest.raises(BatchCancelled) as caught:
        run_batch_on_cluster(rows[:4], "local:1", on_row=cancel_after_the_first, cancel=cancel)

    stopped = caught.value
    assert [outcome.number for outcome in stopped.finished] == [1]
    assert {3, 4} <= set(stopped.not_run) and set(stopped.stopped) | set(stopped.not_run) == {
        2, 3, 4,
    }  # fmt: skip
    assert stopped.stopped_wrote_nothing  # the worker stopped row 2 before its commit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.gpkg"]


CTRL_C_TABLE_ROWS = 6


def _batch_in_its_own_group(pair: Path, folder: Path, rows: int, *options: str) -> Any:
    """Start ``mtrs batch --scheduler local:2`` of ``rows`` rows over ``pair``, writing ``folder``.

    In a process group of its own, as a terminal's foreground job: Ctrl+C is a SIGINT to all.
    """
    table = folder / "rows.csv"
    table.write_text(
        "before,after,query,output\n"
        + "".join(f"{pair / 'before.tif'},{pair / 'after.tif'},,{folder / f'{n}.gpkg'}\n"
                  for n in range(1, rows + 1))
    )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "mtrs_geo.cli.main", "batch", str(table), "--scheduler", "local:2",
         *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def test_ctrl_c_on_a_local_cluster_batch_is_one_line_and_leaves_no_worker(
    pairs_csv: Path, tmp_path: Path
) -> None:
    """Ctrl+C reaches the batch and its local workers alike (one process group)."""
    batch = _batch_in_its_own_group(pairs_csv.parent / "large", tmp_path, CTRL_C_TABLE_ROWS)
    try:
        assert batch.stdout is not None
        first = batch.stdout.readline()  # "row N: ok, ..." once a row finished
        assert first.startswith("row "), first
        os.killpg(batch.pid, signal.SIGINT)
        out, err = batch.communicate(timeout=STOP_TIMEOUT_S + 30)
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    assert batch.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: cancelled: "), err
    finished = 1 + out.count("\n")  # the first line and the rows reported after it
    assert len(list(tmp_path.glob("*.gpkg"))) == finished
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left


def _a_starting_worker(process: Any) -> bool:
    """Whether a process is a worker starting (its launcher, or its interpreter)."""
    try:
        return "spawn_main" in " ".join(process.cmdline())
    except Exception:  # noqa: BLE001 - gone meanwhile
        return False


def test_ctrl_c_while_the_local_workers_start_is_one_line_and_starts_no_row(
    pairs_csv: Path, tmp_path: Path
) -> None:
    """A worker interrupted as it starts would print tracebacks and fail the cluster."""
    import psutil

    batch = _batch_in_its_own_group(pairs_csv.parent / "small", tmp_path, 3, "--json")
    try:
        deadline = time.monotonic() + 60
        while not any(_a_starting_worker(child)
                      for child in psutil.Process(batch.pid).children(recursive=True)):  # fmt: skip
            assert batch.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(batch.pid, signal.SIGINT)  # a worker is starting: importing, unpickling
        out, err = batch.communicate(timeout=60)
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    assert (batch.returncode, err.strip()) == (
        130, "Error: cancelled: 0 of 3 rows finished; 3 rows not run"
    ), err  # fmt: skip
    assert json.loads(out.splitlines()[-1])["not_run"] == [1, 2, 3]
    assert list(tmp_path.glob("*.gpkg")) == []


def test_a_second_ctrl_c_while_the_cluster_closes_comes_after_it_closed() -> None:
    from mtrs_geo.distributed import _interrupts_deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now: it only noted the signal
            steps.append("closed")
    assert steps == ["closed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
