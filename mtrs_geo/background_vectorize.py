"""A streaming vectorizer fed from a thread of its own: rows are stitched while others polygonize.

The stitcher hands each run of finished rows to :meth:`BackgroundVectorizer.add_rows`, which copies
them into a recycled buffer and queues them (at most ``depth`` runs ahead); a worker thread feeds
them, in order, to the wrapped :class:`~mtrs_geo.vectorize.StreamingVectorizer`. The polygons are
the wrapped vectorizer's, unchanged: only the thread doing the work differs. On two cores the
stitching (numpy, which releases the GIL) and the polygonization then overlap.
"""

from __future__ import annotations

import queue
import threading
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from mtrs_geo.vectorize import StreamingVectorizer

if TYPE_CHECKING:
    import geopandas as gpd

# Runs of rows queued ahead of the worker (each a copy: memory is depth + 2 runs of rows).
DEFAULT_DEPTH = 2

_Rows = tuple[int, np.ndarray, np.ndarray, int]  # (first row, rows, their buffer, first column)


class BackgroundVectorizer:
    """Feed ``inner`` from a worker thread; :meth:`result` waits for it and returns its table.

    Use as a context manager, or call :meth:`close`: the thread ends with it, even when the rows
    never all came (an error upstream).

    Args:
        inner: the vectorizer doing the work.
        depth: runs of rows queued ahead of the worker.

    """

    def __init__(self, inner: StreamingVectorizer, depth: int = DEFAULT_DEPTH) -> None:
        self.inner = inner
        self._queue: queue.Queue[_Rows | None] = queue.Queue(maxsize=max(1, depth))
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()  # flat float32 buffers
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._work, name="mtrs-vectorize", daemon=True
        )
        self._thread.start()

    def add_rows(self, row_offset: int, values: np.ndarray, col_offset: int = 0) -> None:
        """Queue a copy of rows for :meth:`StreamingVectorizer.add_rows` (waits when full).

        Raises:
            Exception: the worker's error on earlier rows, if any.

        """
        self._raise_error()
        if self._thread is None:
            raise ValueError("the vectorizer is closed")
        buffer = self._buffer(values.size)
        rows = buffer[: values.size].reshape(values.shape)
        np.copyto(rows, values, casting="same_kind")
        self._queue.put((row_offset, rows, buffer, col_offset))

    def result(self) -> gpd.GeoDataFrame:
        """Wait for every queued row to be polygonized; return the wrapped vectorizer's table."""
        self.close()
        self._raise_error()
        return self.inner.result()

    def close(self) -> None:
        """Let the worker finish the rows queued so far and end it (idempotent)."""
        if self._thread is None:
            return
        self._queue.put(None)  # the worker always drains the queue: this never waits for long
        self._thread.join()
        self._thread = None

    def _buffer(self, size: int) -> np.ndarray:
        """Return a flat float32 buffer of at least ``size`` values (a recycled one if it fits)."""
        try:
            buffer = self._free.get_nowait()
        except queue.Empty:
            return np.empty(size, dtype=np.float32)
        return buffer if buffer.size >= size else np.empty(size, dtype=np.float32)

    def _work(self) -> None:
        """Worker: feed queued rows to ``inner`` until told to stop; keep the first error.

        The rows are polygonized in one GDAL environment of this thread (rasterio otherwise
        sets one up for every region's polygons: a tenth of the work on a large scene).
        """
        import rasterio

        with rasterio.Env():
            while True:
                item = self._queue.get()
                if item is None:
                    return
                row_offset, rows, buffer, col_offset = item
                if self._error is None:  # after an error, rows are drained unread
                    try:
                        self.inner.add_rows(row_offset, rows, col_offset)
                    except BaseException as exc:  # re-raised in the caller's thread
                        self._error = exc
                self._free.put(buffer)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundVectorizer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
