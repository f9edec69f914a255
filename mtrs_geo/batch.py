"""Many detections in one go: a CSV of pairs, checked as a whole, then run row by row.

The rows are read (:func:`read_pairs_csv`), turned into configs (:func:`batch_configs`), checked
together before any work (:func:`check_batch`: no two rows write one file, no row overwrites an
input) and run (:func:`run_batch`); a failing row is reported and the batch goes on.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mtrs_geo.cancel import CancelSwitch, check_cancel
from mtrs_geo.config import DetectConfig, same_file
from mtrs_geo.errors import Cancelled, InputError, MtrsError
from mtrs_geo.sources import local_inputs, resolve_in

BATCH_COLUMNS = ("before", "after", "query", "output")


def read_pairs_csv(path: Path) -> list[dict[str, str]]:
    """Read a batch CSV (columns before, after, query, output; optional mask_out).

    Relative paths are resolved against the CSV's folder (each file of a comma-separated list of
    rasters too; URLs are kept as they are).

    Raises:
        InputError: unreadable file, missing columns, or no rows.

    """
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [name.strip() for name in reader.fieldnames or []]
            rows = [
                {key.strip(): (value or "").strip() for key, value in row.items() if key}
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    missing = [column for column in BATCH_COLUMNS if column not in fields]
    if missing:
        raise InputError(
            f"{Path(path).name} lacks the column(s) {', '.join(missing)}: "
            f"the header must name {', '.join(BATCH_COLUMNS)}"
        )
    rows = [row for row in rows if any(row.values())]
    if not rows:
        raise InputError(f"{Path(path).name} has no rows")
    base = Path(path).parent
    for row in rows:
        for column in ("before", "after"):
            row[column] = resolve_in(row.get(column, ""), base)
        for column in ("output", "mask_out"):
            if row.get(column):
                row[column] = str(base / Path(row[column]).expanduser())
    return rows


@dataclass(frozen=True)
class BatchRow:
    """One row of a batch: its number (from 1), its config, or why it cannot run."""

    number: int
    config: DetectConfig | None
    error: InputError | None = None
    output: str = ""


def batch_configs(
    rows: list[dict[str, str]], template: DetectConfig, mask_out_dir: Path | None = None
) -> list[BatchRow]:
    """Turn CSV rows into configs: the row's pair, query and outputs on ``template``'s options.

    A row without its own mask raster gets ``mask_out_dir / <output stem>.tif`` when
    ``mask_out_dir`` is given.
    """
    planned = []
    for number, row in enumerate(rows, start=1):
        output = row.get("output", "")
        if not row.get("before") or not row.get("after"):
            error = InputError("before and after must both be given")
            planned.append(BatchRow(number, None, error, output))
            continue
        mask_out = Path(row["mask_out"]) if row.get("mask_out") else None
        if mask_out is None and mask_out_dir is not None and output:
            mask_out = Path(mask_out_dir) / (Path(output).stem + ".tif")
        config = replace(
            template,
            before=row["before"],
            after=row["after"],
            query=row.get("query", ""),
            output=Path(output) if output else None,
            mask_out=mask_out,
        )
        planned.append(BatchRow(number, config, None, output))
    return planned


def check_batch(rows: list[BatchRow]) -> None:
    """Refuse a batch whose rows would destroy each other's files, before any work.

    Raises:
        InputError: two rows write one file (naming both rows), or a row writes over one of its
            own input images.

    """
    written: list[tuple[int, Path]] = []
    for row in rows:
        if row.config is None:
            continue
        for output in row.config.outputs():
            for role, image in (("before", row.config.before), ("after", row.config.after)):
                if any(same_file(output, Path(name)) for name in local_inputs(image)):
                    raise InputError(
                        f"row {row.number} writes {output} over its {role} image: choose "
                        "another output name"
                    )
            for number, earlier in written:
                if same_file(output, earlier):
                    raise InputError(
                        f"rows {number} and {row.number} both write {output}: give each row "
                        "its own output"
                    )
            written.append((row.number, output))


@dataclass(frozen=True)
class RowOutcome:
    """What one row did: ``ok`` with the run's summary, or ``failed`` with an exit code and why."""

    number: int
    output: str
    ok: bool
    exit_code: int
    message: str
    result: Any = None  # the DetectResult of a row that ran

    def to_json(self) -> dict[str, Any]:
        """Return the JSON line of this row (what ``mtrs batch --json`` prints)."""
        record: dict[str, Any] = {"row": self.number, "output": self.output}
        if self.ok:
            return record | {"status": "ok", **self.result.to_json()}
        return record | {"status": "failed", "exit_code": self.exit_code, "message": self.message}


def run_batch(
    rows: list[BatchRow],
    *,
    on_row: Callable[[RowOutcome], None],
    progress_for: Callable[[int], Callable[[int, int], None] | None] | None = None,
    cancel: threading.Event | None = None,
    messages: Callable[[Any], None] | None = None,
) -> list[RowOutcome]:
    """Run every row (after :func:`check_batch`); a failing row is reported and the batch goes on.

    Args:
        rows: the planned rows.
        on_row: called with each row's outcome as soon as it is known.
        progress_for: returns the progress callback of a row (by number), or None.
        cancel: stops the batch; the rows already done keep their outputs.
        messages: receives the runs' :class:`~mtrs_geo.pipeline.RunMessage` lines.

    Raises:
        InputError: the rows collide (:func:`check_batch`).
        Cancelled: ``cancel`` was set.

    """
    from mtrs_geo.pipeline import detect

    check_batch(rows)
    outcomes = []
    for row in rows:
        if isinstance(cancel, CancelSwitch):
            cancel.reopen()  # a cancel that came during the last row's commit counts now
        check_cancel(cancel)
        if row.config is None:
            assert row.error is not None
            outcome = RowOutcome(row.number, row.output, False, row.error.exit_code, str(row.error))
        else:
            progress = progress_for(row.number) if progress_for is not None else None
            try:
                result = detect(row.config, progress, cancel, messages)
                outcome = RowOutcome(row.number, row.output, True, 0, "", result)
            except Cancelled:
                raise
            except MtrsError as exc:
                outcome = RowOutcome(row.number, row.output, False, exc.exit_code, str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the batch
                message = f"internal error: {type(exc).__name__}: {exc}"
                outcome = RowOutcome(row.number, row.output, False, 1, message)
        outcomes.append(outcome)
        on_row(outcome)
    return outcomes
