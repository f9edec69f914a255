"""The tile stream: a prefetching reader that feeds normalized, batched tiles to the model.

A background thread opens its own dataset handles, reads the windows of both images in the order
given (the pipeline's: panel by panel, row-major within a panel) and puts them, in the images' own
dtypes, into a bounded queue (``prefetch`` tiles), so reading overlaps the model's compute. Windows
where no pixel is valid in both images are skipped (and counted). The main thread normalizes the
tiles straight into the batch's float32 arrays, invalid pixels 0 and short edge tiles mirror-padded
(:mod:`mtrs_geo.padding`): the reader thread, which already spends most of its time in GDAL, stays
as short as the bare reads.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from mtrs_geo.align import AlignedReader
from mtrs_geo.grid import Grid, RunSize, Tiling, check_run_size, run_size
from mtrs_geo.normalize import BandStats, percentile_stretch
from mtrs_geo.padding import pad_tile
from mtrs_geo.read import RasterInfo

# How long the reader thread waits on a full queue before checking whether it was stopped (seconds).
_PUT_TIMEOUT = 0.1


@dataclass(frozen=True)
class Tile:
    """One window of both images as read: ``(data (C, h, w) own dtype, valid (h, w))`` each."""

    window: Window
    before: tuple[np.ndarray, np.ndarray]
    after: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TileBatch:
    """A batch for the model; ``tiles_done`` counts windows consumed so far, skipped included.

    Its arrays are reused for the next batch: they are valid until the next one is asked for.
    """

    windows: list[Window]
    before: np.ndarray  # (B, C, T, T) float32
    after: np.ndarray  # (B, C, T, T) float32
    valid: np.ndarray  # (B, T, T) bool
    tiles_done: int


def prepare_tile(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    stats_before: BandStats,
    stats_after: BandStats,
    tile_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalize a window pair, zero its invalid pixels, mirror-pad it to ``tile_size``.

    Returns ``(before (C, T, T), after (C, T, T), valid (T, T))``; the padding
    (:func:`mtrs_geo.padding.pad_tile`) is invalid. A larger window keeps its size.
    """
    height, width = before[1].shape
    size_h, size_w = max(tile_size, height), max(tile_size, width)
    norm_b = np.empty((before[0].shape[0], size_h, size_w), dtype=np.float32)
    norm_a = np.empty((after[0].shape[0], size_h, size_w), dtype=np.float32)
    valid = np.empty((size_h, size_w), dtype=bool)
    prepare_tile_into(before, after, stats_before, stats_after, norm_b, norm_a, valid)
    return norm_b, norm_a, valid


def prepare_tile_into(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    stats_before: BandStats,
    stats_after: BandStats,
    out_before: np.ndarray,
    out_after: np.ndarray,
    out_valid: np.ndarray,
) -> None:
    """:func:`prepare_tile` written into ``(C, T, T)``/``(T, T)`` arrays (slots of a batch)."""
    (data_b, valid_b), (data_a, valid_a) = before, after
    h, w = valid_b.shape
    valid = out_valid[:h, :w]
    np.logical_and(valid_b, valid_a, out=valid)
    norm_b = percentile_stretch(data_b, stats_before, out=out_before[:, :h, :w])
    norm_a = percentile_stretch(data_a, stats_after, out=out_after[:, :h, :w])
    if not valid.all():
        invalid = ~valid
        norm_b[:, invalid] = 0.0
        norm_a[:, invalid] = 0.0
    size_h, size_w = out_valid.shape
    if h < size_h or w < size_w:
        out_before[...] = pad_tile(norm_b, size_h, size_w)
        out_after[...] = pad_tile(norm_a, size_h, size_w)
        out_valid[h:, :] = False
        out_valid[:h, w:] = False


def _recycled(
    free: collections.deque[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return a read buffer handed back by the consumer, if there is one."""
    try:
        return free.popleft()
    except IndexError:
        return None


class TileStream:
    """Iterate batches of normalized tiles over ``windows`` of the common grid.

    Reading needs no statistics: :meth:`start` may begin it while the run is still sampling the
    scene, and :meth:`batches` then normalizes with the statistics found.

    Args:
        before: the before image.
        after: the after image.
        grid: the common grid.
        windows: the windows, in the order to read them.
        tile_size: size tiles are padded to.
        batch_size: tiles per batch.
        prefetch: tiles the reader may read ahead of the consumer.

    """

    def __init__(
        self,
        before: RasterInfo,
        after: RasterInfo,
        grid: Grid,
        windows: Sequence[Window],
        tile_size: int,
        batch_size: int,
        prefetch: int = 4,
    ) -> None:
        self.before, self.after, self.grid = before, after, grid
        self.windows = list(windows)
        self.tile_size = tile_size
        # Never more slots than tiles: a large batch size on a small scene allocates nothing idle.
        self.batch_size = max(1, min(batch_size, len(self.windows)))
        self._queue: queue.Queue[Tile | Window | BaseException | None] = queue.Queue(
            maxsize=max(1, prefetch)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Read buffers of tiles already normalized, handed back to the reader (no page faults
        # for every tile), and the batch arrays, reused from batch to batch.
        self._free_before: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._free_after: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._batch_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.skipped = 0
        self._read_seconds = 0.0  # reader thread: reading and aligning
        self._batch_seconds = 0.0  # main thread: normalizing into batches

    @property
    def read_seconds(self) -> float:
        """Seconds spent reading, aligning and normalizing tiles (both threads)."""
        return self._read_seconds + self._batch_seconds

    def _put(self, item: Tile | Window | BaseException | None) -> bool:
        """Put ``item`` on the queue unless the stream is stopped; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_PUT_TIMEOUT)
                return True
            except queue.Full:
                continue
        return False

    def _read_all(self) -> None:
        """Reader thread: read and queue every window (skipped ones as bare windows)."""
        try:
            with (
                AlignedReader(self.before, self.grid) as reader_b,
                AlignedReader(self.after, self.grid) as reader_a,
            ):
                for window in self.windows:
                    if self._stop.is_set():
                        return
                    start = time.perf_counter()
                    read_b = reader_b.read_native(window, _recycled(self._free_before))
                    # Skip the after read when the before image has nothing there.
                    if not read_b[1].any():
                        item: Tile | Window = window
                        self._free_before.append(read_b)
                    else:
                        read_a = reader_a.read_native(window, _recycled(self._free_after))
                        if not (read_b[1] & read_a[1]).any():
                            item = window
                            self._free_before.append(read_b)
                            self._free_after.append(read_a)
                        else:
                            item = Tile(window, read_b, read_a)
                    self._read_seconds += time.perf_counter() - start
                    if not self._put(item):
                        return
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def start(self) -> None:
        """Start the reader thread (once); it reads up to ``prefetch`` tiles ahead."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._read_all, name="mtrs-tile-reader", daemon=True
            )
            self._thread.start()

    def batches(self, stats_before: BandStats, stats_after: BandStats) -> Iterator[TileBatch]:
        """Yield batches normalized with these statistics until every window is consumed."""
        self.start()
        pending: list[Tile] = []
        done = 0
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                done += 1
                if isinstance(item, Window):
                    self.skipped += 1
                    continue
                pending.append(item)
                if len(pending) == self.batch_size:
                    yield self._batch(pending, done, stats_before, stats_after)
                    pending = []
            if pending:
                yield self._batch(pending, done, stats_before, stats_after)
        finally:
            self.close()

    def _batch(
        self, tiles: list[Tile], done: int, stats_before: BandStats, stats_after: BandStats
    ) -> TileBatch:
        """Normalize ``tiles`` into the float32 arrays of one batch (valid until the next one)."""
        start = time.perf_counter()
        count, size = len(tiles), self.tile_size
        shapes = (
            (self.batch_size, tiles[0].before[0].shape[0], size, size),
            (self.batch_size, tiles[0].after[0].shape[0], size, size),
        )
        arrays = self._batch_arrays
        if arrays is None or (arrays[0].shape, arrays[1].shape) != shapes:
            arrays = (
                np.empty(shapes[0], dtype=np.float32),
                np.empty(shapes[1], dtype=np.float32),
                np.empty((self.batch_size, size, size), dtype=bool),
            )
            self._batch_arrays = arrays
        before, after, valid = (a[:count] for a in arrays)
        for i, tile in enumerate(tiles):
            prepare_tile_into(
                tile.before, tile.after, stats_before, stats_after,
                before[i], after[i], valid[i],
            )  # fmt: skip
            self._free_before.append(tile.before)
            self._free_after.append(tile.after)
        batch = TileBatch(
            windows=[t.window for t in tiles],
            before=before,
            after=after,
            valid=valid,
            tiles_done=done,
        )
        self._batch_seconds += time.perf_counter() - start
        return batch

    def close(self) -> None:
        """Stop the reader thread and wait for it to release its dataset handles."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def scene_batches(
    before: RasterInfo,
    after: RasterInfo,
    grid: Grid,
    tiling: Tiling,
    batch_size: int,
    stats_before: BandStats,
    stats_after: BandStats,
    stop: threading.Event | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pixel of the grid once, as normalized ``(before, after, valid)`` batches.

    A first, streamed pass over the scene for scene-wide statistics (``tiling.pass_panels``: tiles
    without overlap, panel by panel like the run itself; memory is one batch and the prefetch
    queue). Stops early, without error, once ``stop`` is set. The arrays are reused from batch to
    batch.
    """
    ordered = [window for panel in tiling.pass_panels for window in panel.windows]
    stream = TileStream(before, after, grid, ordered, tiling.tile_size, batch_size)
    try:
        for batch in stream.batches(stats_before, stats_after):
            if stop is not None and stop.is_set():
                return
            yield batch.before, batch.after, batch.valid
    finally:
        stream.close()


def machine_memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_resources(
    before: RasterInfo,
    after: RasterInfo,
    grid: Grid,
    tile_size: int,
    overlap: int,
    batch_size: int,
    prefetch: int,
    panel_width: int,
    memory_bytes: int | None = None,
) -> RunSize:
    """Estimate a run's memory on ``grid`` and refuse it when it cannot fit (before any work).

    Raises:
        InputError: the run needs more memory than the machine has, or the grid is too large; the
            message gives the figures.

    """
    input_bytes = max(np.dtype(info.dtype).itemsize for info in (before, after))
    size = run_size(
        grid.width, grid.height, len(before.bands), input_bytes,
        tile_size, overlap, batch_size, prefetch, panel_width,
    )  # fmt: skip
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    if memory > 0:
        check_run_size(size, tile_size, memory)
    return size
