"""One decode of a scene for a pixel score model (``cva``): scores kept, then rows of answers.

A :class:`~mtrs_geo.model_api.PixelScoreModel` answers each pixel from one score of that pixel,
calibrated on the scores of the whole scene. Instead of a pass over the scene for the calibration
and a second read of every tile (with overlap) for the answers, the engine reads each pixel once:

1. :func:`score_scene`: every pixel once (``tiling.pass_panels``, tiles without overlap), its
   score kept in a :class:`ScoreStore` (NaN where no pixel is valid) while the batches' summaries
   are merged; the model then settles its calibration on the whole scene. The windows are dealt
   to :data:`PASS_WORKERS` threads, each decoding and scoring its share (:func:`pass_shares`).
2. :func:`score_rows`: the finished rows of probabilities, straight from the store, panel by
   panel and a row of the run's tiles at a time, to each query's :class:`~mtrs_geo.stitch.RowSink`
   (probability raster, vectorizer). A pixel's answer depends on its score alone, so the blend of
   the overlapping tiles a stitcher would make is that answer: no stitching, and the outputs are
   those of a run that predicts every tile, up to the blend's float rounding.

The store is in memory up to :data:`SCORE_MEMORY_BYTES`, else a float32 file in the run's scratch
folder (4 bytes per pixel of disk), written and read a row of a tile at a time.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rasterio.windows import Window

from mtrs_geo.aoi import AreaOfInterest
from mtrs_geo.cancel import check_cancel
from mtrs_geo.grid import Grid, Panel, Tiling
from mtrs_geo.model_api import PixelScoreModel
from mtrs_geo.normalize import BandStats
from mtrs_geo.probability_raster import PROBABILITY_NODATA
from mtrs_geo.stitch import RowSink
from mtrs_geo.tiling import TileStream

# Scores of scenes up to this size are kept in memory (8192^2 pixels); larger ones in a file.
SCORE_MEMORY_BYTES = 256 * 1024 * 1024
_FLOAT = np.dtype(np.float32)
# Threads scoring the pass at once: the pass is bound by decoding and numpy, which release the GIL.
PASS_WORKERS = 2
# How long the pass waits for a worker's next batch before checking for a cancel (seconds).
_WAIT_SECONDS = 0.1


def scores_in_memory(height: int, width: int) -> np.ndarray:
    """Return a float32 ``(height, width)`` array in fresh memory, mapped at once where possible.

    An anonymous memory map of its own, not ``np.empty``: numpy asks the kernel for huge pages on
    large arrays, and the first touch of 256 MiB of them by the pass's threads cost 0.5-0.9 s of
    page faults on the 2-core machine (measured); a map populated in one call (Linux
    ``MAP_POPULATE``) took 0.11-0.14 s for the same 256 MiB, and writing into it 0.03 s. The map
    is released with the last array that views it.
    """
    size = max(height * width * _FLOAT.itemsize, 1)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    flags |= getattr(mmap, "MAP_POPULATE", 0)
    memory = mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)
    return np.frombuffer(memory, dtype=_FLOAT, count=height * width).reshape(height, width)


class ScoreStore:
    """The float32 scores of a grid, NaN where no pixel is valid: in memory or in a scratch file.

    Args:
        height: grid rows.
        width: grid columns.
        folder: where the file goes when the scores do not fit ``memory_bytes``.
        memory_bytes: the most bytes kept in memory (default :data:`SCORE_MEMORY_BYTES`).

    """

    def __init__(
        self, height: int, width: int, folder: Path, memory_bytes: int | None = None
    ) -> None:
        if memory_bytes is None:
            memory_bytes = SCORE_MEMORY_BYTES
        self.height, self.width = height, width
        self.path: Path | None = None
        self._array: np.ndarray | None = None
        self._fd = -1
        # (row_off, col_off, height, width) of each window written with an invalid pixel
        self._holes: list[tuple[int, int, int, int]] = []
        if height * width * _FLOAT.itemsize <= memory_bytes:
            self._array = scores_in_memory(height, width)
        else:
            self.path = Path(folder) / "scores.f32"
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    @property
    def in_memory(self) -> bool:
        """True when the scores are kept in memory (no file)."""
        return self._array is not None

    def write(self, window: Window, scores: np.ndarray, valid: np.ndarray) -> None:
        """Keep the scores of ``window`` (``(h, w)`` or larger, cropped); NaN where not valid."""
        row_off, col_off = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if self._array is not None:  # straight into place: no temporary
            tile = self._array[row_off : row_off + h, col_off : col_off + w]
            np.copyto(tile, scores[:h, :w])
        else:
            tile = np.array(scores[:h, :w], dtype=_FLOAT)
        inside = valid[:h, :w]
        if not inside.all():
            np.copyto(tile, np.float32(np.nan), where=~inside)
            self._holes.append((row_off, col_off, h, w))  # list.append: safe across threads
        if self._array is not None:
            return
        for row in range(h):
            self._pwrite(tile[row], (row_off + row) * self.width + col_off)

    def write_missing(self, window: Window) -> None:
        """Mark ``window`` as holding no valid pixel (a window the reader skipped)."""
        h, w = int(window.height), int(window.width)
        self.write(window, np.zeros((h, w), _FLOAT), np.zeros((h, w), dtype=bool))

    def all_valid(self, row_off: int, col_off: int, height: int, width: int) -> bool:
        """Return True when every pixel of the block has a score (no window there had a hole)."""
        return not any(
            r < row_off + height and row_off < r + h and c < col_off + width and col_off < c + w
            for r, c, h, w in self._holes
        )

    def read(self, row_off: int, col_off: int, out: np.ndarray) -> np.ndarray:
        """Return the scores of rows ``row_off...`` and columns ``col_off...`` (``out``'s shape).

        A read-only view of the kept scores when they are in memory (no copy), else ``out``.
        """
        h, w = out.shape
        if self._array is not None:
            view = self._array[row_off : row_off + h, col_off : col_off + w]
            view.flags.writeable = False  # the caller reads the store, never changes it
            return view
        for row in range(h):
            self._pread(out[row], (row_off + row) * self.width + col_off)
        return out

    def _pwrite(self, values: np.ndarray, pixel: int) -> None:
        data = np.ascontiguousarray(values).data.cast("B")
        offset = pixel * _FLOAT.itemsize
        while data:
            done = os.pwrite(self._fd, data, offset)
            data, offset = data[done:], offset + done

    def _pread(self, out: np.ndarray, pixel: int) -> None:
        view = out.data.cast("B")
        offset, done = pixel * _FLOAT.itemsize, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"the score file {self.path} ends early")
            done += got

    def close(self) -> None:
        """Free the scores; remove the file."""
        self._array = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def score_scene(
    model: PixelScoreModel,
    streams: Sequence[TileStream],
    stats: tuple[BandStats, BandStats],
    store: ScoreStore,
    cancel: threading.Event | None,
    timings: dict[str, float],
    on_windows: Callable[[int], None] | None = None,
) -> None:
    """Score every window of ``streams`` (each pixel once) into ``store``; settle the model on them.

    Each stream (a share of the scene's windows, :func:`pass_shares`) is scored in a worker thread
    of its own, while its own reader thread decodes ahead: decoding, normalizing and scoring of
    different windows run at once (numpy and GDAL release the GIL). The model's
    :meth:`~mtrs_geo.model_api.PixelScoreModel.scores` and ``score_summary`` are therefore called
    from several threads at once (a pixel score is a pure function of its pixel); the workers'
    summaries are merged in stream order. Adds the scoring seconds of every worker to
    ``timings["model"]``; calls ``on_windows`` with the windows scored so far after each batch of
    any worker (the pass is where the run spends its time: progress moves with it).

    Raises:
        Cancelled: ``cancel`` was set (checked after each batch, and while waiting for one).

    """
    events: queue.Queue[_Scored | _ShareDone | BaseException] = queue.Queue()
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=_score_share,
            args=(model, stream, stats, store, stop, events, index),
            name=f"mtrs-score-{index}",
            daemon=True,
        )
        for index, stream in enumerate(streams)
    ]
    done: list[_ShareDone] = []
    scored = 0
    try:
        for worker in workers:
            worker.start()
        while len(done) < len(workers):
            check_cancel(cancel)
            try:
                event = events.get(timeout=_WAIT_SECONDS)
            except queue.Empty:
                continue
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, _ShareDone):
                done.append(event)
                continue
            scored += event.windows
            timings["model"] += event.seconds
            if on_windows is not None:
                on_windows(scored)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    check_cancel(cancel)
    written = set().union(*(share.written for share in done))
    for stream in streams:
        for window in stream.windows:  # the reader skipped them: no valid pixel there
            if (int(window.row_off), int(window.col_off)) not in written:
                store.write_missing(window)
    summaries = [share.summary for share in sorted(done, key=lambda share: share.index)]
    summaries = [summary for summary in summaries if summary is not None]
    if summaries:
        model.settle_scene([model.merge_summaries(summaries)])


def pass_shares(windows: Sequence[Window], count: int) -> list[list[Window]]:
    """Deal ``windows`` out to ``count`` workers in turn (neighbours to different workers)."""
    count = max(1, min(count, len(windows)))
    return [list(windows[index::count]) for index in range(count)]


@dataclass(frozen=True)
class _Scored:
    """A worker scored a batch of ``windows`` windows in ``seconds``."""

    windows: int
    seconds: float


@dataclass(frozen=True)
class _ShareDone:
    """A worker's share is scored: its merged summary and the windows it wrote."""

    index: int
    summary: Any
    written: set[tuple[int, int]]


def _score_share(
    model: PixelScoreModel,
    stream: TileStream,
    stats: tuple[BandStats, BandStats],
    store: ScoreStore,
    stop: threading.Event,
    events: queue.Queue[_Scored | _ShareDone | BaseException],
    index: int,
) -> None:
    """Worker: score the batches of one stream into ``store``; report each batch, then the share.

    Stops after the batch in hand once ``stop`` is set; an error is handed to the caller.
    """
    try:
        summary: Any = None
        written: set[tuple[int, int]] = set()
        for batch in stream.batches(*stats):
            if stop.is_set():
                return
            start = time.perf_counter()
            scores = model.scores(batch.before, batch.after)
            for tile, window in enumerate(batch.windows):
                store.write(window, scores[tile], batch.valid[tile])
                written.add((int(window.row_off), int(window.col_off)))
            part = model.score_summary(scores, batch.valid)
            summary = part if summary is None else model.merge_summaries([summary, part])
            events.put(_Scored(len(batch.windows), time.perf_counter() - start))
        events.put(_ShareDone(index, summary, written))
    except BaseException as exc:  # handed to the caller, which re-raises it
        events.put(exc)
    finally:
        stream.close()


def tile_rows(panel: Panel) -> Iterator[list[Window]]:
    """Yield the windows of a panel a row of tiles at a time (they are row-major)."""
    row: list[Window] = []
    for window in panel.windows:
        if row and window.row_off != row[0].row_off:
            yield row
            row = []
        row.append(window)
    if row:
        yield row


def score_rows(
    model: PixelScoreModel,
    store: ScoreStore,
    tiling: Tiling,
    sinks: Sequence[RowSink],
    grid: Grid,
    area: AreaOfInterest | None,
    cancel: threading.Event | None,
    timings: dict[str, float],
    threshold: float | None = None,
) -> tuple[int, int]:
    """Hand each sink the finished rows of probabilities, computed once from the kept scores.

    A pixel score model answers a pixel from its score alone, so every overlapping tile gives a
    pixel the same answer and their blend is that answer: the rows need no stitching (the
    stitched rows equal them up to the blend's float rounding, within 1e-6). They go out as the
    stitcher hands them on: panel by panel, the panel's own columns, a row of tiles at a time from
    the top. A pixel without a valid score, or outside ``area``, is nodata. The tiles of
    ``tiling`` are counted as the tile path counts them: one without a valid pixel is skipped.
    Adds to ``timings["read"]``, ``["model"]`` and ``["stitch"]`` (progress is the pass's:
    :func:`score_scene`).

    When no sink writes a probability raster and ``threshold`` (the probability the sinks'
    polygons are cut at, 0 < it < 1) is given, only the pixels whose score reaches
    :meth:`~mtrs_geo.model_api.PixelScoreModel.min_score` get their probability computed; the
    others, below ``threshold`` whatever their exact value, are handed on as 0. The changed
    pixels, and so the polygons and their mean probabilities, are the same.

    Returns:
        The tiles predicted and the tiles skipped.

    Raises:
        Cancelled: ``cancel`` was set.

    """
    cut = -np.inf
    if threshold is not None and 0.0 < threshold < 1.0 and all(s.path is None for s in sinks):
        cut = model.min_score(threshold)
    widest = max(panel.width for panel in tiling.panels)
    height = min(tiling.tile_size, grid.height)
    strip_buffer = np.empty(height * widest, dtype=_FLOAT)
    invalid_buffer = np.empty(strip_buffer.shape, dtype=bool)
    rows_buffer = np.empty(strip_buffer.shape, dtype=_FLOAT)
    run = skipped = 0
    for panel in tiling.panels:
        tile_tops = [int(row[0].row_off) for row in tile_rows(panel)]
        for index, row in enumerate(tile_rows(panel)):
            check_cancel(cancel)
            start = time.perf_counter()
            top = tile_tops[index]
            shape = (max(int(window.height) for window in row), panel.width)
            size = shape[0] * shape[1]
            strip = store.read(top, panel.col_off, strip_buffer[:size].reshape(shape))
            # This row of tiles finishes the rows above the next row of tiles' top.
            count = tile_tops[index + 1] - top if index + 1 < len(tile_tops) else shape[0]
            own = (count, panel.own_width)
            rows = rows_buffer[: own[0] * own[1]].reshape(own)
            valid: np.ndarray | None = None  # None: every pixel of the strip is valid
            if area is None and store.all_valid(top, panel.col_off, *shape):
                run += len(row)  # no NaN to look for, no nodata to write
            else:
                invalid = np.isnan(strip, out=invalid_buffer[:size].reshape(shape))
                for window in row:
                    first = int(window.col_off) - panel.col_off
                    tile = invalid[: int(window.height), first : first + int(window.width)]
                    if tile.all():
                        skipped += 1
                    else:
                        run += 1
                valid = ~invalid[:count, : own[1]]
                if area is not None:  # pixels outside the area's polygons are nodata
                    window = Window(panel.col_off, top, own[1], count)
                    valid = area.inside(grid, window, valid)
            loaded = time.perf_counter()
            _probabilities_into(model, strip[:count, : own[1]], valid, cut, rows)
            scored = time.perf_counter()
            for sink in sinks:
                sink.put(top, panel.col_off, rows)
            timings["read"] += loaded - start
            timings["model"] += scored - loaded
            timings["stitch"] += time.perf_counter() - scored
    check_cancel(cancel)
    return run, skipped


def _probabilities_into(
    model: PixelScoreModel,
    scores: np.ndarray,
    valid: np.ndarray | None,
    cut: float,
    out: np.ndarray,
) -> None:
    """Write the probabilities of the valid ``scores`` into ``out``, nodata elsewhere.

    ``scores`` is kept; ``valid`` None: every pixel is. With a finite ``cut`` only the valid
    pixels scoring at or above it are computed, the other valid ones are 0; an infinite one
    (``inf``: nothing can change) leaves every valid pixel 0.
    """
    invalid = None if valid is None else ~valid
    if cut == -np.inf:
        np.copyto(out, scores)
        if invalid is not None:
            out[invalid] = 0.0
        model.probabilities(out)
    else:
        out.fill(0.0)
        if cut != np.inf:
            keep = np.greater_equal(scores, np.float32(cut))  # NaN (no valid score): false
            if valid is not None:
                keep &= valid
            out[keep] = model.probabilities(scores[keep])
    if invalid is not None:
        np.copyto(out, np.float32(PROBABILITY_NODATA), where=invalid)
