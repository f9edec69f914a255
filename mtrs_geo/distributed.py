"""Batches on a Dask cluster: each row of a batch is one Dask task run by a worker process.

A worker runs :func:`mtrs_geo.pipeline.detect` on its row and reads the row's images itself (a
shared path or a URL): only the row's config goes out and its summary comes back. A worker that
dies mid-row has its row run again on another worker by the scheduler (Dask's
``allowed-failures``); the run's staged outputs (hidden scratch folder, one commit) mean the dead
worker left no file that looks finished, and the next run in that folder removes its scratch
files. Dask is imported only when a batch uses it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mtrs_geo.batch import BatchRow, RowOutcome, check_batch
from mtrs_geo.cancel import check_cancel
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError, MtrsError

# Seconds to wait for a scheduler to answer, and for the first worker to join.
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Scheduler:
    """Where rows run: an existing scheduler's address, or ``workers`` local worker processes."""

    address: str | None = None
    workers: int = 0

    @property
    def is_local(self) -> bool:
        """Whether a local cluster is started for the batch."""
        return self.address is None


def parse_scheduler(text: str) -> Scheduler:
    """Read a scheduler: ``local:N`` (N worker processes here) or an address (``tcp://host:8786``).

    Raises:
        InputError: neither form.

    """
    text = text.strip()
    if text.startswith("local:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"scheduler {text!r}: local:N needs a number of workers N >= 1")
        return Scheduler(workers=int(count))
    address = text if "://" in text else f"tcp://{text}"
    host_port = address.split("://", 1)[1]
    if not host_port or ":" not in host_port:
        raise InputError(
            f"scheduler {text!r} is neither local:N nor an address such as tcp://host:8786"
        )
    return Scheduler(address=address)


@contextmanager
def dask_client(scheduler: Scheduler) -> Iterator[Any]:
    """Connect to the scheduler (or start a local cluster) for the block; closed at its end.

    Raises:
        InputError: the scheduler cannot be reached.

    """
    from dask.distributed import Client, LocalCluster

    if scheduler.is_local:
        cluster = LocalCluster(
            n_workers=scheduler.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never a clash with a running cluster
        )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(scheduler.address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler.address}: {exc}") from exc
    with client:
        yield client


def run_row(number: int, output: str, config: DetectConfig) -> RowOutcome:
    """Run one row on a worker; every failure the engine reports becomes a failed outcome."""
    from mtrs_geo.pipeline import detect

    try:
        result = detect(config)
    except MtrsError as exc:
        return RowOutcome(number, output, False, exc.exit_code, str(exc))
    return RowOutcome(number, output, True, 0, "", result)


def run_batch_on_cluster(
    rows: list[BatchRow],
    scheduler: Scheduler | str,
    *,
    on_row: Callable[[RowOutcome], None],
    cancel: threading.Event | None = None,
) -> list[RowOutcome]:
    """Run the rows of a batch as Dask tasks; outcomes come back as rows finish, in any order.

    Args:
        rows: the planned rows (:func:`mtrs_geo.batch.batch_configs`).
        scheduler: an address, ``local:N`` or a :class:`Scheduler`.
        on_row: called on this machine with each row's outcome as soon as it is known.
        cancel: stops the batch: rows not finished are cancelled (their old outputs are kept).

    Returns:
        The outcomes in row order.

    Raises:
        InputError: the rows collide, or the scheduler cannot be reached.
        Cancelled: ``cancel`` was set.

    """
    from dask.distributed import as_completed

    check_batch(rows)
    if isinstance(scheduler, str):
        scheduler = parse_scheduler(scheduler)
    outcomes: list[RowOutcome] = []
    with dask_client(scheduler) as client:
        futures = {}
        batch_id = uuid.uuid4().hex[:8]
        for row in rows:
            if row.config is None:
                assert row.error is not None
                failed = RowOutcome(row.number, row.output, False, row.error.exit_code,
                                    str(row.error))  # fmt: skip
                outcomes.append(failed)
                on_row(failed)
                continue
            future = client.submit(
                run_row, row.number, row.output, row.config,
                key=f"mtrs-row-{batch_id}-{row.number}", pure=False,
            )  # fmt: skip
            futures[future] = row
        pending = as_completed(list(futures))
        try:
            for future in pending:
                check_cancel(cancel)
                row = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died too often, say
                    message = f"internal error on the cluster: {type(exc).__name__}: {exc}"
                    outcome = RowOutcome(row.number, row.output, False, 1, message)
                outcomes.append(outcome)
                on_row(outcome)
        except BaseException:
            client.cancel(list(futures))
            raise
    return sorted(outcomes, key=lambda outcome: outcome.number)
