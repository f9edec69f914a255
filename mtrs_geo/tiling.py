"""The tile stream: a prefetching reader that feeds normalized, batched tiles to the model.

A background thread opens its own dataset handles, reads the windows of both images in row-major
order, normalizes them and puts them into a bounded queue (``prefetch`` tiles), so reading overlaps
the model's compute. Windows where no pixel is valid in both images are skipped (and counted). The
main thread stacks tiles into batches of torch tensors.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rasterio.windows import Window

from mtrs_geo.align import AlignedReader
from mtrs_geo.grid import Grid
from mtrs_geo.normalize import BandStats, percentile_stretch
from mtrs_geo.read import RasterInfo

# How long the reader thread waits on a full queue before checking whether it was stopped (seconds).
_PUT_TIMEOUT = 0.1


@dataclass(frozen=True)
class Tile:
    """One window of both images: normalized ``(C, T, T)`` arrays and joint validity ``(T, T)``."""

    window: Window
    before: np.ndarray
    after: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class TileBatch:
    """A batch for the model; ``tiles_done`` counts windows consumed so far, skipped included."""

    windows: list[Window]
    before: torch.Tensor  # (B, C, T, T) float32
    after: torch.Tensor  # (B, C, T, T) float32
    valid: torch.Tensor  # (B, T, T) bool
    tiles_done: int


@functools.lru_cache(maxsize=16)
def _stretch_table(stats: BandStats, dtype: str) -> tuple[np.ndarray, int]:
    """Tabulate :func:`percentile_stretch` ``(C, levels)`` for every value of a small int dtype.

    Returns the table and the offset that maps the dtype's minimum to index 0. Built by calling
    :func:`percentile_stretch` itself, so table lookups equal the direct computation exactly.
    """
    info = np.iinfo(np.dtype(dtype))
    levels = np.arange(info.min, info.max + 1, dtype=np.float32)
    ramp = np.broadcast_to(levels, (stats.band_count, 1, levels.size))
    return percentile_stretch(ramp, stats)[:, 0, :], -int(info.min)


def normalize_tile(data: np.ndarray, stats: BandStats) -> np.ndarray:
    """Apply :func:`percentile_stretch` to ``(C, h, w)`` data; 8/16-bit integers use a lookup table.

    A table lookup is one pass over the tile instead of a float conversion and four arithmetic
    passes: the reader thread spends most of its time here otherwise.
    """
    if data.dtype.kind in "ui" and data.dtype.itemsize <= 2:
        table, offset = _stretch_table(stats, data.dtype.str)
        out = np.empty(data.shape, dtype=np.float32)
        for band in range(data.shape[0]):
            index = data[band] if offset == 0 else data[band].astype(np.int32) + offset
            np.take(table[band], index, out=out[band])
        return out
    return percentile_stretch(data, stats)


def prepare_tile(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    stats_before: BandStats,
    stats_after: BandStats,
    tile_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalize a window pair, zero its invalid pixels, mirror-pad it to ``tile_size``.

    Returns ``(before (C, T, T), after (C, T, T), valid (T, T))``; padding is invalid.
    """
    (data_b, valid_b), (data_a, valid_a) = before, after
    valid = valid_b & valid_a
    norm_b = normalize_tile(data_b, stats_before)
    norm_a = normalize_tile(data_a, stats_after)
    if not valid.all():
        norm_b[:, ~valid] = 0.0
        norm_a[:, ~valid] = 0.0
    pad_h, pad_w = tile_size - valid.shape[0], tile_size - valid.shape[1]
    if pad_h > 0 or pad_w > 0:
        widths = ((0, 0), (0, max(pad_h, 0)), (0, max(pad_w, 0)))
        norm_b = np.pad(norm_b, widths, mode="symmetric")
        norm_a = np.pad(norm_a, widths, mode="symmetric")
        valid = np.pad(valid, widths[1:], mode="constant", constant_values=False)
    return norm_b, norm_a, valid


class TileStream:
    """Iterate batches of normalized tiles over ``windows`` of the common grid.

    Args:
        before: the before image.
        after: the after image.
        grid: the common grid.
        windows: row-major windows (from :func:`mtrs_geo.grid.tile_windows`).
        stats_before: normalization statistics of the before image.
        stats_after: normalization statistics of the after image.
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
        stats_before: BandStats,
        stats_after: BandStats,
        tile_size: int,
        batch_size: int,
        prefetch: int = 4,
    ) -> None:
        self.before, self.after, self.grid = before, after, grid
        self.windows = list(windows)
        self.stats_before, self.stats_after = stats_before, stats_after
        self.tile_size = tile_size
        self.batch_size = max(1, batch_size)
        self._queue: queue.Queue[Tile | Window | BaseException | None] = queue.Queue(
            maxsize=max(1, prefetch)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0
        self.read_seconds = 0.0  # time the reader thread spent reading and normalizing

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
        """Reader thread: read, normalize and queue every window (skipped ones as bare windows)."""
        try:
            with (
                AlignedReader(self.before, self.grid) as reader_b,
                AlignedReader(self.after, self.grid) as reader_a,
            ):
                for window in self.windows:
                    if self._stop.is_set():
                        return
                    start = time.perf_counter()
                    read_b = reader_b.read_native(window)
                    # Skip the after read when the before image has nothing there.
                    if not read_b[1].any():
                        item: Tile | Window = window
                    else:
                        read_a = reader_a.read_native(window)
                        if not (read_b[1] & read_a[1]).any():
                            item = window
                        else:
                            norm_b, norm_a, valid = prepare_tile(
                                read_b, read_a, self.stats_before, self.stats_after, self.tile_size
                            )
                            item = Tile(window, norm_b, norm_a, valid)
                    self.read_seconds += time.perf_counter() - start
                    if not self._put(item):
                        return
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def __iter__(self) -> Iterator[TileBatch]:
        """Start the reader thread and yield batches until every window is consumed."""
        self._thread = threading.Thread(target=self._read_all, name="mtrs-tile-reader", daemon=True)
        self._thread.start()
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
                    yield self._batch(pending, done)
                    pending = []
            if pending:
                yield self._batch(pending, done)
        finally:
            self.close()

    @staticmethod
    def _batch(tiles: list[Tile], done: int) -> TileBatch:
        return TileBatch(
            windows=[t.window for t in tiles],
            before=torch.from_numpy(np.stack([t.before for t in tiles])),
            after=torch.from_numpy(np.stack([t.after for t in tiles])),
            valid=torch.from_numpy(np.stack([t.valid for t in tiles])),
            tiles_done=done,
        )

    def close(self) -> None:
        """Stop the reader thread and wait for it to release its dataset handles."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
