"""Issue 11, item 9: scratch files live hidden beside the outputs and never outlive a run.

A run's scratch folder (``.mtrs-run-HOST-PID-XXXX``) is removed when the run ends, those of killed
runs by the next run that writes into the folder, and a scratch folder that vanishes mid-run is
reported in plain words, naming it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_run import files_in, run_mtrs
from scenes import make_pair

from mtrs_geo import write
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import OutputError
from mtrs_geo.pipeline import detect
from mtrs_geo.write import SCRATCH_PREFIX, clean_stale_scratch


def scratch_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(SCRATCH_PREFIX))


def dead_pid() -> int:
    """The id of a process that has just ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


def test_scratch_files_are_hidden_beside_the_output_and_gone_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = make_pair(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    seen: list[list[str]] = []
    real_commit = write.StagedOutputs.commit

    def look_then_commit(self: write.StagedOutputs) -> list[Path]:
        for folder in scratch_folders(out):
            seen.append([str(p.relative_to(folder)) for p in folder.rglob("*")])
        return real_commit(self)

    monkeypatch.setattr(write.StagedOutputs, "commit", look_then_commit)
    config = DetectConfig(
        before=pair.before, after=pair.after, output=out / "c.gpkg", mask_out=out / "m.tif"
    )
    detect(config)
    assert len(seen) == 1  # one scratch folder, in the output folder
    assert {"probability.tif", "staged/c.gpkg", "staged/m.tif"} <= set(seen[0])
    assert files_in(out) == ["c.gpkg", "m.tif"]
    assert list(system_temp.iterdir()) == []


def test_a_mask_named_like_the_runs_own_scratch_raster_is_written(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data")
    mask = tmp_path / "probability.tif"  # the name of the stitched raster in the scratch folder
    result = run_mtrs("detect", pair.before, pair.after, "--mask-out", mask, "--json")
    assert result.code == 0, result.err
    assert mask.read_bytes()[:4] == b"II*\x00"


def test_the_next_run_removes_the_scratch_of_a_killed_run_and_keeps_a_live_one(
    tmp_path: Path,
) -> None:
    pair = make_pair(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    host = socket.gethostname()
    killed = out / f"{SCRATCH_PREFIX}{host}-{dead_pid()}-abcd1234"
    killed.mkdir()
    (killed / "probability.tif").write_bytes(b"x" * 1000)
    live = out / f"{SCRATCH_PREFIX}{host}-{os.getppid()}-efgh5678"  # our parent still runs
    live.mkdir()

    result = run_mtrs("detect", pair.before, pair.after, "-o", out / "c.geojson")

    assert result.code == 0, result.err
    assert not killed.exists() and live.exists()
    assert sorted(files_in(out)) == sorted(["c.geojson", live.name])


def test_a_scratch_folder_of_another_machine_is_removed_only_when_old(tmp_path: Path) -> None:
    recent = tmp_path / f"{SCRATCH_PREFIX}other-host-123-abcd1234"
    old = tmp_path / f"{SCRATCH_PREFIX}other-host-456-abcd1234"
    recent.mkdir()
    old.mkdir()
    a_week_ago = os.path.getmtime(old) - 7 * 24 * 3600
    os.utime(old, (a_week_ago, a_week_ago))
    assert clean_stale_scratch(tmp_path) == [old]
    assert recent.exists()


def test_a_vanished_scratch_folder_is_said_in_plain_words(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.tif").write_bytes(b"old")

    def delete_scratch(done: int, total: int) -> None:
        for folder in scratch_folders(out):
            shutil.rmtree(folder)

    config = DetectConfig(
        before=pair.before, after=pair.after, mask_out=out / "m.tif", tile_size=64, overlap=0
    )
    with pytest.raises(OutputError) as raised:
        detect(config, progress=delete_scratch)
    message = str(raised.value)
    assert "scratch" in message and "vanished" in message and str(out) in message
    assert "\n" not in message
    assert files_in(out) == ["m.tif"] and (out / "m.tif").read_bytes() == b"old"


def test_the_cli_names_the_vanished_scratch_folder_instead_of_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtrs_geo.cli import common

    pair = make_pair(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    real_call = common.ProgressReporter.__call__

    def delete_scratch(self: common.ProgressReporter, done: int, total: int) -> None:
        for folder in scratch_folders(out):
            shutil.rmtree(folder)
        real_call(self, done, total)

    monkeypatch.setattr(common.ProgressReporter, "__call__", delete_scratch)
    result = run_mtrs(
        "detect", pair.before, pair.after, "-o", out / "c.geojson", "--mask-out", out / "m.tif",
        "--tile-size", "64", "--overlap", "0",
    )  # fmt: skip
    assert result.code == 1
    assert "Internal error" not in result.err and "No such file" not in result.err
    assert "scratch folder" in result.err and "vanished" in result.err
    assert files_in(out) == []
