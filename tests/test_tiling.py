import threading
from pathlib import Path

import numpy as np
import pytest
from rasterio.windows import Window
from scenes import ImageSpec, make_pair

from mtrs_geo import tiling
from mtrs_geo.align import AlignedReader
from mtrs_geo.grid import common_grid, tile_windows
from mtrs_geo.normalize import BandStats, percentile_stretch
from mtrs_geo.read import open_raster
from mtrs_geo.tiling import TileStream, prepare_tile, prepare_tile_into

STATS = BandStats(low=(30.0, 30.0, 30.0), high=(220.0, 220.0, 220.0))


def stream_for(
    tmp_path: Path, tile: int, overlap: int, batch: int, **pair_kwargs: object
) -> TileStream:
    pair = make_pair(tmp_path, **pair_kwargs)  # type: ignore[arg-type]
    before, after = open_raster(pair.before), open_raster(pair.after)
    grid = common_grid(before.grid, after.grid)
    windows = tile_windows(grid.width, grid.height, tile, overlap)
    return TileStream(before, after, grid, windows, tile, batch, prefetch=2)


def test_batches_are_normalized_float32_arrays_and_every_window_is_counted(tmp_path: Path) -> None:
    stream = stream_for(tmp_path, tile=64, overlap=8, batch=3)
    batches = list(stream.batches(STATS, STATS))
    total = len(stream.windows)
    assert sum(len(b.windows) for b in batches) == total and stream.skipped == 0
    assert [len(b.windows) for b in batches[:-1]] == [3] * (len(batches) - 1)
    assert batches[-1].tiles_done == total
    assert [b.tiles_done for b in batches] == sorted(b.tiles_done for b in batches)
    first = batches[0]
    assert first.before.shape == (3, 3, 64, 64) and first.before.dtype == np.float32
    assert first.valid.shape == (3, 64, 64) and first.valid.dtype == np.bool_
    assert 0.0 <= float(first.after.min()) and float(first.after.max()) <= 1.0
    # Row-major windows, in the order they were given.
    assert [w for b in batches for w in b.windows] == stream.windows


def test_all_nodata_windows_are_skipped_and_counted(tmp_path: Path) -> None:
    # The after image covers only the southern half of the before image; the rest is nodata.
    stream = stream_for(
        tmp_path,
        tile=64,
        overlap=0,
        batch=2,
        before=ImageSpec(nodata=0),
        after=ImageSpec(nodata=0, extent=(500_000.0, 4_998_720.0, 502_560.0, 5_001_280.0)),
    )
    stream.grid = stream.before.grid  # tile the whole before image, not only the overlap
    stream.windows = tile_windows(256, 256, 64, 0)
    batches = list(stream.batches(STATS, STATS))
    run = [w for b in batches for w in b.windows]
    assert stream.skipped == 8 and len(run) == 8  # the northern two tile rows are skipped
    assert all(w.row_off >= 128 for w in run)
    assert batches[-1].tiles_done == 16


def test_a_scene_smaller_than_the_tile_is_padded_and_the_padding_is_invalid(tmp_path: Path) -> None:
    stream = stream_for(tmp_path, tile=300, overlap=20, batch=4)
    (batch,) = list(stream.batches(STATS, STATS))
    assert batch.windows == [Window(0, 0, 256, 256)]
    assert batch.before.shape == (1, 3, 300, 300)
    assert batch.valid[0, :256, :256].all() and not batch.valid[0, 256:].any()
    assert not batch.valid[0, :, 256:].any()


def test_prepare_tile_zeroes_pixels_invalid_in_either_image() -> None:
    data = np.full((3, 4, 4), 125.0, dtype=np.float32)
    valid_b = np.ones((4, 4), dtype=bool)
    valid_a = valid_b.copy()
    valid_a[0, 0] = False
    norm_b, norm_a, valid = prepare_tile((data, valid_b), (data.copy(), valid_a), STATS, STATS, 4)
    assert not valid[0, 0] and valid.sum() == 15
    assert norm_b[:, 0, 0].tolist() == [0.0] * 3 and norm_a[:, 0, 0].tolist() == [0.0] * 3
    np.testing.assert_allclose(norm_b[:, 1, 1], 0.5, atol=1e-6)


def test_closing_early_stops_the_reader_thread(tmp_path: Path) -> None:
    stream = stream_for(tmp_path, tile=32, overlap=0, batch=1)
    iterator = stream.batches(STATS, STATS)
    next(iterator)
    stream.close()
    assert not any(t.name == "mtrs-tile-reader" for t in threading.enumerate())


def test_a_reader_error_reaches_the_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailingReader(AlignedReader):
        def read_native(
            self, window: Window, out: tuple[np.ndarray, np.ndarray] | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
            if window.row_off > 0:
                raise RuntimeError("disk gone")
            return super().read_native(window, out)

    monkeypatch.setattr(tiling, "AlignedReader", FailingReader)
    stream = stream_for(tmp_path, tile=128, overlap=0, batch=1)
    iterator = stream.batches(STATS, STATS)
    next(iterator)
    next(iterator)  # the second tile of the first row
    with pytest.raises(RuntimeError, match="disk gone"):
        next(iterator)
    assert not any(t.name == "mtrs-tile-reader" for t in threading.enumerate())


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_stretch_of_a_tile_in_its_own_dtype_equals_that_of_a_float32_copy(dtype: str) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if dtype != "float32" else None
    low, high = (info.min, info.max) if info is not None else (-5.0, 5.0)
    data = rng.uniform(low, high, size=(3, 40, 50)).astype(dtype)
    stats = BandStats(low=(float(low) / 2, 0.0, 3.0), high=(float(high) / 3, 100.0, 4.0))
    expected = percentile_stretch(data.astype(np.float32), stats)
    np.testing.assert_array_equal(percentile_stretch(data, stats), expected)


def _reference_stretch(tile: np.ndarray, stats: BandStats) -> np.ndarray:
    """The stretch written out as its definition: float32 (x - low) / (high - low), clipped."""
    low = np.asarray(stats.low, dtype=np.float32)[:, None, None]
    high = np.asarray(stats.high, dtype=np.float32)[:, None, None]
    out = (tile.astype(np.float32) - low) / (high - low)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("spread", [1.0, 0.0])
def test_stretch_of_a_tile_matches_its_definition_and_keeps_the_input(
    dtype: str, spread: float
) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 250, size=(3, 30, 20)).astype(dtype)
    if dtype == "float32":
        data[0, 0, :3] = (np.nan, np.inf, -np.inf)
    original = data.copy()
    # spread 0 gives a band with high == low (division by zero, mapped like the definition).
    stats = BandStats(low=(10.0, 0.0, 5.0), high=(200.0, 255.0, 5.0 + 100.0 * spread))
    with np.errstate(divide="ignore", invalid="ignore"):  # the degenerate band divides by zero
        got, want = percentile_stretch(data, stats), _reference_stretch(data, stats)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(data, original)


def _old_prepare_tile(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    tile_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """prepare_tile written the plain way: stretch, zero invalid, mirror-pad (the reference)."""
    valid = before[1] & after[1]
    norm_b, norm_a = _reference_stretch(before[0], STATS), _reference_stretch(after[0], STATS)
    norm_b[:, ~valid] = 0.0
    norm_a[:, ~valid] = 0.0
    pad = ((0, 0), (0, tile_size - valid.shape[0]), (0, tile_size - valid.shape[1]))
    return (
        np.pad(norm_b, pad, mode="symmetric"),
        np.pad(norm_a, pad, mode="symmetric"),
        np.pad(valid, pad[1:], mode="constant", constant_values=False),
    )


@pytest.mark.parametrize("shape", [(16, 16), (11, 16), (16, 9), (5, 7)])
def test_tiles_normalized_into_batch_slots_equal_the_reference(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    reads = []
    for _ in range(2):
        data = rng.integers(0, 256, size=(3, *shape)).astype(np.uint8)
        valid = rng.random(shape) > 0.2
        reads.append((data, valid))
    expected = _old_prepare_tile(reads[0], reads[1], 16)
    for got, want in zip(prepare_tile(reads[0], reads[1], STATS, STATS, 16), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # Into slot 1 of a batch whose memory holds garbage: every pixel of the slot is written.
    batch_b = np.full((2, 3, 16, 16), np.nan, dtype=np.float32)
    batch_a, batch_valid = batch_b.copy(), np.ones((2, 16, 16), dtype=bool)
    prepare_tile_into(reads[0], reads[1], STATS, STATS, batch_b[1], batch_a[1], batch_valid[1])
    for got, want in zip((batch_b[1], batch_a[1], batch_valid[1]), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert np.isnan(batch_b[0]).all()  # the other slot is untouched


def test_batches_reuse_their_arrays_and_each_holds_its_own_tiles(tmp_path: Path) -> None:
    stream = stream_for(tmp_path, tile=64, overlap=8, batch=2)
    seen = []
    with (
        AlignedReader(stream.before, stream.grid) as reader_b,
        AlignedReader(stream.after, stream.grid) as reader_a,
    ):
        for batch in stream.batches(STATS, STATS):
            seen.append(batch)
            for i, window in enumerate(batch.windows):  # checked before the next batch
                expected = prepare_tile(
                    reader_b.read_native(window), reader_a.read_native(window), STATS, STATS, 64
                )
                np.testing.assert_array_equal(batch.before[i], expected[0])
                np.testing.assert_array_equal(batch.after[i], expected[1])
                np.testing.assert_array_equal(batch.valid[i], expected[2])
    assert len(seen) > 2
    assert np.shares_memory(seen[0].before, seen[-1].before)  # no new arrays per batch
