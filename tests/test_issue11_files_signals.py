"""Issue 11, item 7: a signal either stops a run (old files kept, exit 130) or comes too late.

Once the outputs are being renamed into place the run is finished: its new files stay and it exits
0. Before, nothing of the old files is touched. Handlers are in place before any work, so SIGTERM
and a second SIGINT exit 130 like the first SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_run import files_in, run_mtrs
from scenes import ScenePair, default_extent, make_pair

from mtrs_geo import write
from mtrs_geo.cancel import CancelSwitch
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import Cancelled
from mtrs_geo.pipeline import detect

OLD = b"the previous run's file"


@pytest.fixture
def outputs(tmp_path: Path, pair: ScenePair) -> tuple[object, Path, Path]:
    vectors, mask = tmp_path / "changes.gpkg", tmp_path / "mask.tif"
    vectors.write_bytes(OLD)
    mask.write_bytes(OLD)
    return pair, vectors, mask


def signal_after(monkeypatch: pytest.MonkeyPatch, name: str, *signums: int) -> None:
    """Send ``signums`` to this process right after ``StagedOutputs.<name>`` ran."""
    real = getattr(write.StagedOutputs, name)

    def then_signal(self: write.StagedOutputs, *args: object) -> object:
        result = real(self, *args)
        for signum in signums:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(write.StagedOutputs, name, then_signal)


@pytest.mark.parametrize(
    "signums",
    [(signal.SIGTERM,), (signal.SIGINT,), (signal.SIGINT, signal.SIGINT)],
    ids=["sigterm", "sigint", "two-sigints"],
)
def test_a_signal_after_the_outputs_were_renamed_keeps_the_new_files_and_exits_0(
    outputs: tuple[object, Path, Path], monkeypatch: pytest.MonkeyPatch, signums: tuple[int, ...]
) -> None:
    pair, vectors, mask = outputs
    signal_after(monkeypatch, "commit", *signums)
    result = run_mtrs(
        "detect",
        pair.before,
        pair.after,
        "-o",
        vectors,
        "--mask-out",
        mask,
        "--json",  # type: ignore[attr-defined]
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["outputs"] == [str(vectors), str(mask)]
    assert vectors.read_bytes().startswith(b"SQLite format 3")
    assert mask.read_bytes()[:4] == b"II*\x00"


@pytest.mark.parametrize(
    "signums", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)], ids=["sigterm", "two-sigints"]
)
def test_a_signal_while_the_outputs_are_written_keeps_the_old_files_and_exits_130(
    outputs: tuple[object, Path, Path], monkeypatch: pytest.MonkeyPatch, signums: tuple[int, ...]
) -> None:
    pair, vectors, mask = outputs
    signal_after(monkeypatch, "stage", *signums)  # the vectors' scratch file is being written
    result = run_mtrs("detect", pair.before, pair.after, "-o", vectors, "--mask-out", mask)  # type: ignore[attr-defined]
    assert result.code == 130, result.err
    assert "Traceback" not in result.err
    assert vectors.read_bytes() == OLD and mask.read_bytes() == OLD
    assert sorted(files_in(vectors.parent)) == ["changes.gpkg", "data", "mask.tif"]


def test_the_library_ignores_a_cancel_once_its_commit_began(
    outputs: tuple[object, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, vectors, mask = outputs
    switch = CancelSwitch()
    real_commit = write.StagedOutputs.commit

    def commit_then_cancel(self: write.StagedOutputs) -> list[Path]:
        done = real_commit(self)
        switch.set()  # the user pressed Ctrl-C just now: too late
        return done

    monkeypatch.setattr(write.StagedOutputs, "commit", commit_then_cancel)
    config = DetectConfig(before=pair.before, after=pair.after, output=vectors, mask_out=mask)  # type: ignore[attr-defined]
    result = detect(config, cancel=switch)
    assert result.outputs == [vectors, mask] and not switch.is_set() and switch.committed
    assert vectors.read_bytes() != OLD and mask.read_bytes() != OLD


def test_a_cancel_just_before_the_commit_keeps_every_old_file(
    outputs: tuple[object, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, vectors, mask = outputs
    cancel = threading.Event()
    real_stage = write.StagedOutputs.stage

    def stage_then_cancel(self: write.StagedOutputs, destination: Path) -> Path:
        if Path(destination) == mask:
            cancel.set()
        return real_stage(self, destination)

    monkeypatch.setattr(write.StagedOutputs, "stage", stage_then_cancel)
    config = DetectConfig(before=pair.before, after=pair.after, output=vectors, mask_out=mask)  # type: ignore[attr-defined]
    with pytest.raises(Cancelled):
        detect(config, cancel=cancel)
    assert vectors.read_bytes() == OLD and mask.read_bytes() == OLD


def test_handlers_are_installed_before_the_command_is_even_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtrs_geo.cli import main as cli_main

    seen: dict[str, object] = {}
    real_import = cli_main.importlib.import_module

    def recording_import(name: str, *args: object) -> object:
        seen[name] = signal.getsignal(signal.SIGTERM)
        return real_import(name, *args)

    monkeypatch.setattr(cli_main.importlib, "import_module", recording_import)
    run_mtrs("detect", tmp_path / "a.tif", tmp_path / "b.tif", "-o", tmp_path / "c.gpkg")
    assert seen["mtrs_geo.cli.detect"] not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)  # restored after main()


@pytest.mark.parametrize(
    "signums", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)], ids=["sigterm", "two-sigints"]
)
def test_early_signals_exit_130_and_leave_the_old_file(
    tmp_path: Path, signums: tuple[int, ...]
) -> None:
    x0, y0, _, _ = default_extent()
    pair = make_pair(tmp_path / "data", extent=(x0, y0, x0 + 10_240, y0 + 10_240))  # 1024 px
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.geojson").write_bytes(OLD)
    command = [
        sys.executable, "-m", "mtrs_geo.cli.main", "detect", str(pair.before), str(pair.after),
        "-o", str(out / "c.geojson"), "--tile-size", "32", "--overlap", "0", "--progress-json",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())  # the first stage: before any model or tile
    assert first["event"] == "stage"
    for signum in signums:
        os.kill(process.pid, signum)
    rest, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    events = [json.loads(line) for line in rest.splitlines()]
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 130
    assert files_in(out) == ["c.geojson"] and (out / "c.geojson").read_bytes() == OLD
