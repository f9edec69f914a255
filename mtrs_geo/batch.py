"""Many detections in one go: a CSV of pairs, checked as a whole, then run row by row.

The rows are read (:func:`read_pairs_csv`), turned into configs (:func:`batch_configs`), checked
together before any work (:func:`check_batch`: no two rows write one file, no row writes over an
input of any row) and run (:func:`run_batch`); a failing row is reported and the batch goes on. A
cancel stops the batch with :class:`BatchCancelled`: the rows that finished keep their outputs.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mtrs_geo.cancel import CancelSwitch, check_cancel
from mtrs_geo.config import (
    DetectConfig,
    InputFile,
    checkpoint_file_written,
    file_key,
    input_files,
)
from mtrs_geo.errors import Cancelled, InputError, MtrsError
from mtrs_geo.sources import resolve_in

BATCH_COLUMNS = ("before", "after", "query", "output")


def read_pairs_csv(path: Path) -> list[dict[str, str]]:
    """Read a batch CSV (columns before, after, query, output; optional mask_out and dates).

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

    Raises:
        InputError: ``mask_out_dir`` is not a folder (a mistake of the whole batch, not a row's).

    """
    if mask_out_dir is not None and not Path(mask_out_dir).is_dir():
        raise InputError(f"the folder for the mask rasters does not exist: {mask_out_dir}")
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
            before_date=row.get("before_date") or None,  # checked with the row's other options
            after_date=row.get("after_date") or None,
        )
        planned.append(BatchRow(number, config, None, output))
    return planned


def check_batch(rows: list[BatchRow]) -> None:
    """Refuse a batch whose rows would destroy each other's files, before any work.

    Every output of every row (polygons and mask rasters) is checked against every output of the
    other rows and every input of every row: the image files (a VRT document's sources too) and
    the area of interest, by path, symbolic or hard link.

    Raises:
        InputError: two rows write one file (naming both rows), a row writes over an input of its
            own or of another row (naming both), or over a file of the model checkpoint.

    """
    planned = [(row.number, row.config) for row in rows if row.config is not None]
    readers: dict[tuple[object, ...], list[tuple[int, InputFile]]] = {}
    for number, config in planned:
        for read in _files_read(config):
            readers.setdefault(file_key(read.path), []).append((number, read))
    writers: dict[tuple[object, ...], int] = {}
    for number, config in planned:
        for output in config.outputs():
            key = file_key(output)
            _refuse_writing_over_inputs(number, output, readers.get(key, []))
            if key in writers:
                raise InputError(
                    f"rows {writers[key]} and {number} both write {output}: give each row its "
                    "own output"
                )
            writers[key] = number
        written = checkpoint_file_written(config)
        if written is not None:
            raise InputError(
                f"row {number} writes {written} over a file of the model checkpoint "
                f"{config.model}: choose another output name"
            )


def _refuse_writing_over_inputs(
    number: int, output: Path, readers: list[tuple[int, InputFile]]
) -> None:
    """Refuse row ``number`` writing ``output`` when rows read it (``readers``: row, input)."""
    own = [read for reader, read in readers if reader == number]
    if own:
        raise InputError(
            f"row {number} writes {output} over its {own[0].role}: choose another output name"
        )
    if readers:
        reader, read = readers[0]
        raise InputError(
            f"row {number} writes {output} over the {read.role} of row {reader}: choose another "
            "output name"
        )


def _files_read(config: DetectConfig) -> list[InputFile]:
    """Return the local files a row reads: :func:`input_files`, and the sources of VRT documents."""
    files = input_files(config)
    for read in list(files):
        if read.path.suffix.lower() == ".vrt" and read.path.is_file():
            files += [
                InputFile(Path(name), read.role, read.given) for name in _vrt_sources(read.path)
            ]
    return files


def _vrt_sources(path: Path) -> list[str]:
    """Return the files GDAL reads for a VRT document (none when it cannot be opened)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as dataset:
            return [name for name in dataset.files if not name.startswith("/vsi")]
    except RasterioError:
        return []  # the row reports it when it runs


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


class BatchCancelled(Cancelled):
    """A batch stopped by a cancel: the rows that finished keep their outputs.

    Attributes:
        total: the rows of the batch.
        finished: the outcomes of the rows that finished (ok or failed), in row order.
        stopped: the rows that were running when the cancel came.
        not_run: the rows that never started.
        stopped_wrote_nothing: whether the stopped rows are known to have written nothing (a
            row the engine stopped before its commit); False where a worker may still finish one.

    """

    def __init__(
        self,
        rows: Sequence[BatchRow],
        finished: Sequence[RowOutcome],
        stopped: Sequence[int],
        *,
        stopped_wrote_nothing: bool = True,
    ) -> None:
        done = {outcome.number for outcome in finished}
        self.total = len(rows)
        self.finished = tuple(sorted(finished, key=lambda outcome: outcome.number))
        self.stopped = tuple(sorted(stopped))
        self.not_run = tuple(
            row.number for row in rows if row.number not in done and row.number not in stopped
        )
        self.stopped_wrote_nothing = stopped_wrote_nothing
        super().__init__(self._message())

    @classmethod
    def unreported(cls, rows: Sequence[BatchRow], finished: Sequence[RowOutcome]) -> BatchCancelled:
        """Return the cancel of a batch run elsewhere that did not account for its rows.

        The rows not reported are "not finished", not known to have written nothing.
        """
        done = {outcome.number for outcome in finished}
        unfinished = [row.number for row in rows if row.number not in done]
        return cls(rows, finished, unfinished, stopped_wrote_nothing=False)

    def _message(self) -> str:
        ok = sum(outcome.ok for outcome in self.finished)
        parts = [f"cancelled: {len(self.finished)} of {self.total} rows finished"]
        if ok:
            parts[0] += ", their outputs are kept"
        if self.stopped:
            rows = _row_list(self.stopped)
            parts.append(
                f"{rows}, in progress, wrote nothing"
                if self.stopped_wrote_nothing
                else f"{rows} not finished"
            )
        if self.not_run:
            parts.append(f"{_count(len(self.not_run), 'row')} not run")
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        """Return the final JSON object of a cancelled batch (``mtrs batch --json``)."""
        ok = sum(outcome.ok for outcome in self.finished)
        return {
            "rows": self.total,
            "ok": ok,
            "failed": len(self.finished) - ok,
            "cancelled": list(self.stopped),
            "not_run": list(self.not_run),
            "exit_code": self.exit_code,
            "message": str(self),
        }


def _row_list(numbers: Sequence[int]) -> str:
    """``row 3`` or ``rows 3, 4``."""
    return ("row " if len(numbers) == 1 else "rows ") + ", ".join(map(str, numbers))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


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
        BatchCancelled: ``cancel`` was set; it says which rows finished, which one it stopped
            (that row wrote nothing) and which never ran.

    """
    from mtrs_geo.pipeline import detect

    check_batch(rows)
    outcomes: list[RowOutcome] = []
    for row in rows:
        if isinstance(cancel, CancelSwitch):
            cancel.reopen()  # a cancel that came during the last row's commit counts now
        try:
            check_cancel(cancel)
        except Cancelled:
            raise BatchCancelled(rows, outcomes, stopped=()) from None
        if row.config is None:
            assert row.error is not None
            outcome = RowOutcome(row.number, row.output, False, row.error.exit_code, str(row.error))
        else:
            progress = progress_for(row.number) if progress_for is not None else None
            try:
                result = detect(row.config, progress, cancel, messages)
                outcome = RowOutcome(row.number, row.output, True, 0, "", result)
            except Cancelled:
                raise BatchCancelled(rows, outcomes, stopped=(row.number,)) from None
            except MtrsError as exc:
                outcome = RowOutcome(row.number, row.output, False, exc.exit_code, str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the batch
                message = f"internal error: {type(exc).__name__}: {exc}"
                outcome = RowOutcome(row.number, row.output, False, 1, message)
        outcomes.append(outcome)
        on_row(outcome)
    return outcomes
