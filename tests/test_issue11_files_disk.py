"""Issue 11, item 6: a full disk never puts a broken file in place of a good one.

Every write is checked and the finished file read back before the rename; the run exits non-zero
with a plain message and the old files stay. Simulated (ENOSPC raised, a write cut short without
an error) everywhere, and on a real 48 KiB tmpfs where this test may mount one.
"""

from __future__ import annotations

import errno
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyogrio
import pytest
import rasterio.shutil
from cli_run import files_in, run_mtrs
from scenes import ScenePair, make_pair

from mtrs_geo.errors import OutputError
from mtrs_geo.write import check_tiff_complete

OLD_MASK = b"old mask, must survive"
OLD_VECTORS = b'{"type": "FeatureCollection", "features": []}'


@pytest.fixture
def run_folder(tmp_path: Path, pair: ScenePair) -> Iterator[tuple[object, Path]]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mask.tif").write_bytes(OLD_MASK)
    (out / "changes.geojson").write_bytes(OLD_VECTORS)
    yield pair, out


def assert_old_files_kept(out: Path) -> None:
    assert (out / "mask.tif").read_bytes() == OLD_MASK
    assert (out / "changes.geojson").read_bytes() == OLD_VECTORS
    assert files_in(out) == ["changes.geojson", "mask.tif"]  # no scratch left behind


def test_enospc_while_writing_the_cog_exits_1_and_keeps_the_old_files(
    run_folder: tuple[object, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, out = run_folder
    real_copy = rasterio.shutil.copy

    def copy_until_full(src: object, dst: object, **kwargs: object) -> None:
        if kwargs.get("driver") == "COG":
            Path(str(dst)).write_bytes(b"II*\x00 half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst, **kwargs)

    monkeypatch.setattr(rasterio.shutil, "copy", copy_until_full)
    result = run_mtrs(
        "detect", pair.before, pair.after, "-o", out / "changes.geojson",  # type: ignore[attr-defined]
        "--mask-out", out / "mask.tif", "--json",
    )  # fmt: skip
    assert result.code == 1
    assert result.err.strip().startswith("Error: cannot write")
    assert "disk is full" in result.err and "Internal error" not in result.err
    assert result.out == ""
    assert_old_files_kept(out)


def test_a_cog_cut_short_without_an_error_is_not_renamed_into_place(
    run_folder: tuple[object, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, out = run_folder
    real_copy = rasterio.shutil.copy

    def copy_then_truncate(src: object, dst: object, **kwargs: object) -> None:
        real_copy(src, dst, **kwargs)
        if kwargs.get("driver") == "COG":
            size = os.path.getsize(str(dst))
            os.truncate(str(dst), size // 2)  # what a silently failed write leaves

    monkeypatch.setattr(rasterio.shutil, "copy", copy_then_truncate)
    result = run_mtrs(
        "detect", pair.before, pair.after, "-o", out / "changes.geojson",  # type: ignore[attr-defined]
        "--mask-out", out / "mask.tif",
    )  # fmt: skip
    assert result.code == 1, result.err
    assert "cut short" in result.err or "cannot write" in result.err
    assert_old_files_kept(out)


def test_vectors_cut_short_are_not_renamed_into_place(
    run_folder: tuple[object, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, out = run_folder
    real_write = pyogrio.write_dataframe

    def write_then_truncate(frame: object, path: object, **kwargs: object) -> None:
        real_write(frame, path, **kwargs)
        os.truncate(str(path), os.path.getsize(str(path)) // 2)

    monkeypatch.setattr(pyogrio, "write_dataframe", write_then_truncate)
    result = run_mtrs(
        "detect", pair.before, pair.after, "-o", out / "changes.geojson",  # type: ignore[attr-defined]
        "--mask-out", out / "mask.tif",
    )  # fmt: skip
    assert result.code == 1, result.err
    assert "cannot write" in result.err and str(out / "changes.geojson") in result.err
    assert_old_files_kept(out)


def test_check_tiff_complete_finds_a_truncated_tiff(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    check_tiff_complete(pair.before)
    broken = tmp_path / "broken.tif"
    data = pair.before.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OutputError, match="cut short"):
        check_tiff_complete(broken)


def can_mount_tmpfs(folder: Path) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "tiny"
    folder.mkdir()
    if not can_mount_tmpfs(folder):
        pytest.skip("needs root and mount to make a tiny tmpfs")
    try:
        yield folder
    finally:
        gc.collect()  # a failed run's traceback may still hold a GDAL dataset open there
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_real_full_disk_exits_1_in_plain_words_and_keeps_the_old_files(
    tmp_path: Path, tiny_disk: Path
) -> None:
    pair = make_pair(tmp_path / "data")
    (tiny_disk / "mask.tif").write_bytes(OLD_MASK)
    (tiny_disk / "changes.geojson").write_bytes(OLD_VECTORS)
    result = run_mtrs(
        "detect", pair.before, pair.after, "-o", tiny_disk / "changes.geojson",
        "--mask-out", tiny_disk / "mask.tif",
    )  # fmt: skip
    assert result.code == 1
    assert "Error: cannot write" in result.err and "disk is full" in result.err
    assert "Internal error" not in result.err
    assert_old_files_kept(tiny_disk)
